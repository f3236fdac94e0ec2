"""A compression job on a centrally trained digits teacher: the phase without a federation."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedge.compression.bundle import generate_keypair, load_private_key
from fedge.compression.export import ExportConfig, export_onnx
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.config import RunConfig
from fedge.core.partition import Federation
from fedge.pipeline.chain.teacher_source import global_source
from fedge.pipeline.ship.job import CompressionJob
from fedge.pipeline.ship.shipping import Timing

QUICK_TIMING = Timing(shipped=(2, 10, 3), candidate=(2, 10, 3))  # figures, not behaviour
# One student, public distillation only, short: what the phase does, not how well.
PHASE = RunConfig(
    clients=4,
    partition="iid",
    student="deep-tiny",
    kd_source="public",
    kd_epochs=3,
    qat_epochs=2,
    student_max_drop=100.0,  # a student of 3 epochs: the phase's mechanics, not its quality
)


@pytest.fixture(scope="module")
def make_job(teacher, digits_fed: Federation, tmp_path_factory):
    """A CompressionJob with the given settings (the digits teacher, a fresh key per module)."""
    teacher_onnx = export_onnx(teacher, (1, 8, 8), ExportConfig())
    private, _ = generate_keypair(Path(tmp_path_factory.mktemp("keys")))
    key = load_private_key(private)
    source = global_source(OnnxTeacher(teacher_onnx), digits_fed.server.public_pool)

    def job(cfg: RunConfig = PHASE) -> CompressionJob:
        return CompressionJob(cfg, source, digits_fed, teacher_onnx, key, "run-1", QUICK_TIMING)

    return job
