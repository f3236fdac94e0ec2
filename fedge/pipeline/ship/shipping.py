"""From a compression outcome to a signed bundle plus the measured figures of teacher and student."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnxruntime import InferenceSession

from fedge.compression.bundle import BundleConfig, make_bundle
from fedge.compression.export import INPUT_NAME, LABEL_NAME, OUTPUT_NAME, PROBABILITIES_NAME
from fedge.core.bundle_format import ARTIFACTS
from fedge.core.data import Preprocessing
from fedge.core.io import gzip_size
from fedge.core.ort import interleaved_latency_us, make_session, session_accuracy, session_call
from fedge.core.partition import Split
from fedge.pipeline.chain.stages import CompressionConfig, CompressionOutcome
from fedge.pipeline.outputs.rows import Latency, StudentFigures, TeacherFigures
from fedge.pipeline.ship.artifacts import DeviceTargets, device_artifacts


@dataclass(frozen=True)
class Timing:
    """How many onnxruntime calls measure a latency: (warm-up, batch-1, batch-64) calls.

    `shipped`: the shipped student beside the teacher (BENCHMARKS.md's counts); `candidate`:
    each candidate on the way, a rougher figure to compare candidates by. Tests pass fewer.
    """

    shipped: tuple[int, int, int] = (200, 1000, 200)
    candidate: tuple[int, int, int] = (50, 500, 100)


log = logging.getLogger("fedge")
MEASURED = Timing()  # what runs, compress and the search use


@dataclass
class Shipment:
    """The signed bundle files and the figures that go into results.json."""

    files: dict[str, bytes]
    manifest: BundleConfig
    teacher: TeacherFigures
    student: StudentFigures

    def artifacts(self) -> dict[str, tuple[bytes, tuple[int, ...]]]:
        """The other runtimes' files in the bundle, with their fixed input shape (batch 1)."""
        shape = (1, *(int(d or 1) for d in self.manifest.input_shape[1:]))
        return {
            runtime: (self.files[name], shape)
            for runtime, (name, _) in ARTIFACTS.items()
            if name in self.files
        }


def ship(
    teacher_onnx: bytes,
    outcome: CompressionOutcome,
    compression: CompressionConfig,
    test: Split,
    *,
    preprocessing: Preprocessing,
    num_classes: int,
    key: Ed25519PrivateKey,
    model_id: str,
    timing: Timing = MEASURED,
    targets: DeviceTargets | None = None,
) -> Shipment:
    """Measure teacher and shipped student on the test split (student on raw input), then sign.

    `targets`: other runtimes' artifacts to sign in beside model.onnx, each converted from the
    shipped model and measured; one that cannot be made ships without it (the reason).
    """
    student_bytes = outcome.student_bytes
    raw_test = preprocessing.invert(test.x)
    teacher_session, student_session = make_session(teacher_onnx), make_session(student_bytes)
    latency = _latency(teacher_session, test.x, student_session, raw_test, timing.shipped)
    teacher_acc = session_accuracy(teacher_session, test.x, test.y)
    student_acc = session_accuracy(student_session, raw_test, test.y)  # what ships
    manifest = BundleConfig(
        model_id=model_id,
        version=time.time_ns() // 1_000_000,
        input_name=INPUT_NAME,
        input_shape=(None, *preprocessing.input_shape),
        output_name=OUTPUT_NAME,
        probabilities_name=PROBABILITIES_NAME,
        label_name=LABEL_NAME,
        preprocessing={**preprocessing.to_json(), "in_model": True},
        labels=tuple(range(num_classes)),
        metrics={"test_accuracy": student_acc, "teacher_test_accuracy": teacher_acc},
        compression=compression.to_json(),
        quantized=outcome.quantization.quantized,
        architecture=compression.distill.student,
    )
    teacher = TeacherFigures(teacher_acc, len(teacher_onnx), latency["teacher"])
    student = StudentFigures(
        accuracy=student_acc,
        params=outcome.student_params,
        onnx_bytes=len(student_bytes),
        gzip_bytes=gzip_size(student_bytes),
        sha256=hashlib.sha256(student_bytes).hexdigest(),
        quantized=outcome.quantization.quantized,
        quantization_reason=outcome.quantization.reason,
        size_ratio=len(teacher_onnx) / len(student_bytes),
        version=manifest.version,
        latency_us=latency["student"],
        architecture=manifest.architecture,
    )
    artifacts, figures = device_artifacts(student_bytes, targets, raw_test, test.y)
    student = replace(student, **figures)
    return Shipment(
        make_bundle(student_bytes, manifest, key, artifacts), manifest, teacher, student
    )


def _latency(
    teacher: InferenceSession,
    x: np.ndarray,
    student: InferenceSession,
    raw: np.ndarray,
    calls: tuple[int, int, int],
) -> dict[str, Latency]:
    """Batch-1 and batch-64 p50 of teacher and shipped student in onnxruntime, interleaved."""
    warmup, b1_iters, b64_iters = calls
    b1 = interleaved_latency_us(
        {"teacher": session_call(teacher, x[:1]), "student": session_call(student, raw[:1])},
        warmup=warmup,
        iters=b1_iters,
    )
    x64, raw64 = np.resize(x, (64, *x.shape[1:])), np.resize(raw, (64, *raw.shape[1:]))
    b64 = interleaved_latency_us(
        {"teacher": session_call(teacher, x64), "student": session_call(student, raw64)},
        warmup=warmup,
        iters=b64_iters,
    )
    return {
        side: Latency(b1_p50=b1[side]["p50"], b64_p50=b64[side]["p50"], b1_p95=b1[side]["p95"])
        for side in ("teacher", "student")
    }
