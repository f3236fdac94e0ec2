"""Artifacts for other runtimes beside model.onnx: model.ort and model.tflite, made and measured."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.compression.targets import TargetError, ort_artifact
from fedge.pipeline.outputs.rows import OrtFigures, TfliteFigures

log = logging.getLogger("fedge")
Artifacts = dict[str, tuple[bytes, tuple[int, ...]]]  # runtime -> (file, fixed input shape)


@dataclass(frozen=True)
class DeviceTargets:
    """Which artifacts a run asks for (device-targets), and the tflite's calibration samples."""

    ort: bool = False
    tflite_calibration: np.ndarray | None = None  # raw samples; None: no tflite


def device_artifacts(
    model: bytes, targets: DeviceTargets | None, raw_test: np.ndarray, labels: np.ndarray
) -> tuple[Artifacts, dict[str, Any]]:
    """The artifacts to sign in, and the student figures they add (figures or reasons)."""
    artifacts: Artifacts = {}
    figures: dict[str, Any] = {}
    if targets is not None and targets.ort:
        made, figures["ort"], figures["ort_reason"] = _ort(model, raw_test, labels)
        artifacts |= made
    if targets is not None and targets.tflite_calibration is not None:
        made, figures["tflite"], figures["tflite_reason"] = _tflite(
            model, targets.tflite_calibration, raw_test, labels
        )
        artifacts |= made
    return artifacts, figures


def _ort(
    model: bytes, raw_test: np.ndarray, labels: np.ndarray
) -> tuple[Artifacts, OrtFigures | None, str]:
    """{"ort": (model.ort, its input shape)} and its figures, or {} and the reason."""
    from fedge.compression.tflite import MIN_AGREEMENT  # noqa: PLC0415 - the same bar
    from fedge.core.ort import (  # noqa: PLC0415
        BatchOne,
        make_session,  # noqa: PLC0415
        ort_format_session,
    )

    try:
        artifact = ort_artifact(model)
        session = BatchOne(ort_format_session(artifact.ort_bytes))
        got = session.run(["label"], {artifact.input_name: raw_test})[0]
        session_onnx = make_session(model)
        want = session_onnx.run(["label"], {artifact.input_name: raw_test})[0]
        agreement = float((got == want).mean()) if len(want) else 1.0
        if agreement < MIN_AGREEMENT:
            raise TargetError(f"its labels agree with model.onnx on {agreement:.2%}")
    except TargetError as err:
        log.warning("model.ort not made: %s", err)
        return {}, None, str(err)
    data = artifact.ort_bytes
    figures = OrtFigures(
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        nnapi_as_is=artifact.nnapi.as_is,
        accuracy=float((got == labels).mean()) if len(labels) else 0.0,
        label_agreement=agreement,
    )
    return {"ort": (data, artifact.input_shape)}, figures, ""


def _tflite(
    model: bytes, calibration: np.ndarray, raw_test: np.ndarray, labels: np.ndarray
) -> tuple[Artifacts, TfliteFigures | None, str]:
    """{"tflite": (model.tflite, its input shape)} and its figures, or {} and the reason."""
    from fedge.compression.tflite import MIN_AGREEMENT, tflite_report, to_tflite  # noqa: PLC0415

    try:
        artifact = to_tflite(model, calibration)
        report = tflite_report(artifact, model, raw_test)
        accuracy = float((report.labels == labels).mean())
        if report.agreement < MIN_AGREEMENT:
            raise TargetError(
                f"its labels agree with model.onnx on {report.agreement:.2%} of the test split, "
                f"below {MIN_AGREEMENT:.0%}"
            )
    except TargetError as err:
        log.warning("model.tflite not made: %s", err)
        return {}, None, str(err)
    data = artifact.tflite_bytes
    figures = TfliteFigures(
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        planned_arena_bytes=report.planned_arena_bytes,
        tflm_arena_bytes=report.tflm_arena.total if report.tflm_arena else None,
        accuracy=accuracy,
        label_agreement=report.agreement,
    )
    return {"tflite": (data, artifact.input_shape)}, figures, ""
