"""One compression of a run's teacher: candidates, the choice, the signed bundle's figures.

A CompressionJob is what every compression of one run needs (settings, the teacher and what
distillation learns from, the data, the key to sign with, the model line); the run's phase,
the device tiers and `fedge compress` each hand one to `compress_and_ship`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.core.config import RunConfig
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import Federation
from fedge.pipeline.chain.federate import FederatedTrainer
from fedge.pipeline.chain.stages import CompressionOutcome
from fedge.pipeline.chain.teacher_source import KdSource
from fedge.pipeline.outputs.rows import (
    ChoiceRecord,
    CompressionRecord,
    GateVerdict,
    StudentVerdict,
    TeacherFigures,
)
from fedge.pipeline.ship.artifacts import DeviceTargets
from fedge.pipeline.ship.candidates import (
    Candidate,
    Choice,
    SweepGrid,
    candidate_configs,
    check_byte_budget,
    choose,
    compress_candidates,
)
from fedge.pipeline.ship.gate import check_student, gate_teacher
from fedge.pipeline.ship.shipping import MEASURED, Shipment, Timing, ship

log = logging.getLogger("fedge")


@dataclass(frozen=True)
class CompressionJob:
    """What every compression of one run's teacher needs."""

    cfg: RunConfig
    source: KdSource  # what distillation learns from (the teacher, or the clients' ensemble)
    fed: Federation  # the server's splits and the data's preprocessing
    teacher_onnx: bytes  # the federated teacher as saved (fp32 ONNX)
    key: Ed25519PrivateKey  # signs every bundle
    model_id: str  # the model line devices install
    timing: Timing = MEASURED  # how many calls time each latency (tests pass fewer)

    def with_settings(self, cfg: RunConfig) -> CompressionJob:
        """The same job with other settings (a tier's, a finalist's)."""
        return dataclasses.replace(self, cfg=cfg)


@dataclass
class Compressed:
    """What one compression made: every candidate, the chosen one, and the signed bundle."""

    job: CompressionJob
    candidates: list[Candidate]
    chosen: Candidate
    choice: Choice
    teacher_val: float
    shipment: Shipment
    gate: GateVerdict
    student_gate: StudentVerdict

    @property
    def outcome(self) -> CompressionOutcome:
        """The shipped candidate's stage chain outcome."""
        return self.chosen.outcome

    def record(self) -> CompressionRecord:
        """What results.json says about compression (also saved, so a resume need not redo it)."""
        return CompressionRecord(
            shipped=True,
            quality_gate=self.gate,
            compression_config=self.chosen.compression.to_json(),
            ensemble=self.job.source.summary,
            stages=tuple(self.outcome.stages),
            choice=self.choice_record(sweep=False),
            student_rounds=self.outcome.federated,  # federated distillation, if any
            teacher=self.shipment.teacher,
            student=self.shipment.student,
            student_gate=self.student_gate,
        )

    def choice_record(self, sweep: bool) -> ChoiceRecord:
        """results.json "choice": the rule, every candidate's row, the chosen one."""
        return ChoiceRecord(
            max_accuracy_drop_pt=self.choice.max_accuracy_drop,
            max_bytes=self.choice.max_bytes,
            teacher_val_accuracy=self.teacher_val,
            sweep=sweep,
            candidates=tuple(c.row for c in self.candidates),
            chosen=self.chosen.row,
        )


def compress_and_ship(
    job: CompressionJob,
    *,
    choice: Choice | None = None,
    grid: SweepGrid | None = None,
    federated: FederatedTrainer | None = None,
) -> Compressed:
    """Compress the candidates the job's settings ask for, choose on validation, sign the choice.

    One candidate for a fixed student; student auto, a limit or a sweep compress several (see
    candidates.candidate_configs). `federated` runs the student's rounds on the clients when the
    settings ask for them. The caller writes the bundle. A teacher that fails the quality gate
    raises gate.NotShippedError before any compression (unless ship-anyway).
    """
    cfg, fed = job.cfg, job.fed
    teacher_session = make_session(job.teacher_onnx)
    teacher_val, gate = gate_teacher(cfg, teacher_session, fed.server.val)
    configs, stop, rule = candidate_configs(cfg, choice or Choice(), grid)
    check_byte_budget(configs, rule, fed)
    candidates = compress_candidates(
        job.source,
        configs,
        fed,
        teacher_val=teacher_val,
        teacher_session=teacher_session,
        federated=federated,
        stop=stop,
        timing=job.timing,
    )
    chosen = choose(candidates, rule)
    if len(candidates) > 1:
        log.info("chose %s of %d candidates", chosen.row.student, len(candidates))
    student_gate = check_student(cfg, chosen.row, teacher_val)
    shipment = ship(
        job.teacher_onnx,
        chosen.outcome,
        chosen.compression,
        fed.server.test,
        preprocessing=fed.dataset.preprocessing,
        num_classes=fed.dataset.num_classes,
        key=job.key,
        model_id=job.model_id,
        timing=job.timing,
        targets=DeviceTargets("ort" in cfg.device_targets, tflite_calibration(cfg, fed)),
    )
    return Compressed(job, candidates, chosen, rule, teacher_val, shipment, gate, student_gate)


def tflite_calibration(cfg: RunConfig, fed: Federation) -> np.ndarray | None:
    """Raw public-pool samples to calibrate model.tflite with, when the run asks for one."""
    if "tflite" not in cfg.device_targets:
        return None
    pool = fed.server.public_pool.x[: cfg.quant_calibration_samples]
    return fed.dataset.preprocessing.invert(pool)


def not_shipped_record(
    gate: GateVerdict | StudentVerdict, job: CompressionJob
) -> CompressionRecord:
    """What results.json says about compression when the quality gate stopped it."""
    test, val = job.fed.server.test, job.fed.server.val
    session = make_session(job.teacher_onnx)
    accuracy = session_accuracy(session, test.x, test.y)
    teacher_gate = gate if isinstance(gate, GateVerdict) else gate_teacher(job.cfg, session, val)[1]
    return CompressionRecord(
        shipped=False,
        quality_gate=teacher_gate,
        compression_config=None,
        ensemble=job.source.summary,
        stages=(),
        choice=None,
        student_rounds=None,
        teacher=TeacherFigures(accuracy, len(job.teacher_onnx)),
        student=None,
        student_gate=gate if isinstance(gate, StudentVerdict) else None,
    )
