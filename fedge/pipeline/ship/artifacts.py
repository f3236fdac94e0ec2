"""Artifacts for other runtimes beside model.onnx: model.ort and model.tflite, made and measured."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedge.compression.targets import MIN_AGREEMENT, TargetError, ort_artifact
from fedge.core.ort import BatchOne, make_session, ort_format_session, session_logits
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
    """The artifacts to sign in, and the student figures they add (figures or reasons).

    Each is measured against model.onnx's labels on the raw test split (computed once) and
    ships only if at least MIN_AGREEMENT of them agree.
    """
    artifacts: Artifacts = {}
    figures: dict[str, Any] = {}
    if targets is None or not (targets.ort or targets.tflite_calibration is not None):
        return artifacts, figures
    onnx_labels = session_logits(make_session(model), raw_test).argmax(axis=1)

    def attempt(
        runtime: str, make: Callable[[], tuple[tuple[bytes, tuple[int, ...]], Any]]
    ) -> None:
        try:
            artifacts[runtime], figures[runtime] = make()
        except TargetError as err:
            log.warning("model.%s not made: %s", runtime, err)
            figures[f"{runtime}_reason"] = str(err)

    if targets.ort:
        attempt("ort", lambda: _ort(model, raw_test, labels, onnx_labels))
    calibration = targets.tflite_calibration
    if calibration is not None:
        attempt("tflite", lambda: _tflite(model, calibration, raw_test, labels, onnx_labels))
    return artifacts, figures


def _agreement(got: np.ndarray, onnx_labels: np.ndarray) -> float:
    """Share of labels equal to model.onnx's; TargetError below MIN_AGREEMENT."""
    agreement = float((got == onnx_labels).mean()) if len(onnx_labels) else 1.0
    if agreement < MIN_AGREEMENT:
        raise TargetError(
            f"its labels agree with model.onnx on {agreement:.2%} of the test split, "
            f"below {MIN_AGREEMENT:.0%}"
        )
    return agreement


def _ort(
    model: bytes, raw_test: np.ndarray, labels: np.ndarray, onnx_labels: np.ndarray
) -> tuple[tuple[bytes, tuple[int, ...]], OrtFigures]:
    """(model.ort, its input shape) and its figures; TargetError when it cannot ship."""
    artifact = ort_artifact(model)
    try:
        session = BatchOne(ort_format_session(artifact.ort_bytes))
        got = session.run(["label"], {artifact.input_name: raw_test})[0]
    except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types
        raise TargetError(f"onnxruntime cannot run model.ort: {str(err)[:200]}") from None
    data = artifact.ort_bytes
    figures = OrtFigures(
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        nnapi_as_is=artifact.nnapi.as_is,
        accuracy=float((got == labels).mean()) if len(labels) else 0.0,
        label_agreement=_agreement(got, onnx_labels),
    )
    return (data, artifact.input_shape), figures


def _tflite(
    model: bytes,
    calibration: np.ndarray,
    raw_test: np.ndarray,
    labels: np.ndarray,
    onnx_labels: np.ndarray,
) -> tuple[tuple[bytes, tuple[int, ...]], TfliteFigures]:
    """(model.tflite, its input shape) and its figures; TargetError when it cannot ship."""
    from fedge.compression.tflite import tflite_report, to_tflite  # noqa: PLC0415 - TF inside

    artifact = to_tflite(model, calibration)
    report = tflite_report(artifact, onnx_labels, raw_test)
    data = artifact.tflite_bytes
    figures = TfliteFigures(
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        planned_arena_bytes=report.planned_arena_bytes,
        tflm_arena_bytes=report.tflm_arena.total if report.tflm_arena else None,
        accuracy=float((report.labels == labels).mean()),
        label_agreement=_agreement(report.labels, onnx_labels),
    )
    return (data, artifact.input_shape), figures
