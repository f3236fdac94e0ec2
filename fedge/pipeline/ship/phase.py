"""The compression phase of a run and of `fedge compress`: candidates, the choice, the signed bundle."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fedge.compression.bundle import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    generate_keypair,
    load_private_key,
    public_pem,
    write_bundle,
)
from fedge.compression.export import ExportConfig, export_onnx
from fedge.core.bundle_format import FILES
from fedge.core.config import RunConfig
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import Federation
from fedge.pipeline.chain.federate import FederatedTrainer
from fedge.pipeline.chain.stages import CompressionOutcome
from fedge.pipeline.chain.teacher_source import KdSource
from fedge.pipeline.rundir.paths import BUNDLE_DIR, COMPRESSED_FILE, KEYS_DIR, TEACHER_FILE
from fedge.pipeline.ship.candidates import (
    Candidate,
    Choice,
    SweepGrid,
    candidate_configs,
    check_byte_budget,
    choose,
    compress_candidates,
)
from fedge.pipeline.ship.gate import gate_teacher
from fedge.pipeline.ship.shipping import Shipment, ship

log = logging.getLogger("fedge")


@dataclass
class Compressed:
    """What the phase made: every candidate, the chosen one, and the signed bundle's figures."""

    source: KdSource
    candidates: list[Candidate]
    chosen: Candidate
    choice: Choice
    teacher_val: float
    shipment: Shipment
    gate: dict[str, Any]

    @property
    def outcome(self) -> CompressionOutcome:
        """The shipped candidate's stage chain outcome."""
        return self.chosen.outcome

    def record(self) -> dict[str, Any]:
        """What results.json says about compression (also saved, so a resume need not redo it)."""
        return {
            "shipped": True,
            "quality_gate": self.gate,
            "compression_config": self.chosen.compression.to_json(),
            "ensemble": self.source.summary,
            "stages": self.outcome.stages,
            "choice": self.choice_json(sweep=False),
            "student_rounds": self.outcome.federated,  # federated distillation, if any
            "teacher": self.shipment.teacher,
            "student": {**self.shipment.student, "architecture": self.chosen.cfg.student},
        }

    def choice_json(self, sweep: bool) -> dict[str, Any]:
        """results.json "choice": the rule, every candidate's row, the chosen one."""
        return {
            "max_accuracy_drop_pt": self.choice.max_accuracy_drop,
            "max_bytes": self.choice.max_bytes,
            "teacher_val_accuracy": self.teacher_val,
            "sweep": sweep,
            "candidates": [c.row for c in self.candidates],
            "chosen": self.chosen.row,
        }


def write_teacher(teacher: nn.Module, fed: Federation, run_dir: Path) -> bytes:
    """The federated teacher as fp32 ONNX, written to the run directory (fedge compress reads it)."""
    teacher_onnx = export_onnx(teacher, fed.dataset.preprocessing.input_shape, ExportConfig())
    atomic_write_bytes(run_dir / TEACHER_FILE, teacher_onnx)
    return teacher_onnx


def compress_and_ship(
    cfg: RunConfig,
    source: KdSource,
    fed: Federation,
    teacher_onnx: bytes,
    key: Any,
    model_id: str,
    *,
    choice: Choice | None = None,
    grid: SweepGrid | None = None,
    federated: FederatedTrainer | None = None,
) -> Compressed:
    """Compress the candidates `cfg` asks for, choose on validation, sign the chosen one.

    One candidate for a fixed student; student auto, a limit or a sweep compress several (see
    candidates.candidate_configs). `federated` runs the student's rounds on the clients when the
    settings ask for them. The caller writes the bundle. A teacher that fails the quality gate
    raises gate.NotShippedError before any compression (unless ship-anyway).
    """
    server = fed.server
    teacher_session = make_session(teacher_onnx)
    teacher_val, gate = gate_teacher(cfg, teacher_session, server.val)
    configs, stop, rule = candidate_configs(cfg, choice or Choice(), grid)
    check_byte_budget(configs, rule, fed)
    candidates = compress_candidates(
        source,
        configs,
        fed,
        teacher_val=teacher_val,
        teacher_session=teacher_session,
        federated=federated,
        stop=stop,
    )
    chosen = choose(candidates, rule)
    if len(candidates) > 1:
        log.info("chose %s of %d candidates", chosen.row["student"], len(candidates))
    shipment = ship(
        teacher_onnx,
        chosen.outcome,
        chosen.compression,
        server.test,
        preprocessing=fed.dataset.preprocessing,
        num_classes=fed.dataset.num_classes,
        key=key,
        model_id=model_id,
    )
    return Compressed(source, candidates, chosen, rule, teacher_val, shipment, gate)


def not_shipped_record(
    gate: dict[str, Any], teacher_onnx: bytes, fed: Federation, source: KdSource
) -> dict[str, Any]:
    """What results.json says about compression when the quality gate stopped it."""
    session = make_session(teacher_onnx)
    return {
        "shipped": False,
        "quality_gate": gate,
        "compression_config": None,
        "ensemble": source.summary,
        "stages": [],
        "choice": None,
        "student_rounds": None,
        "teacher": {
            "accuracy": session_accuracy(session, fed.server.test.x, fed.server.test.y),
            "onnx_bytes": len(teacher_onnx),
        },
        "student": None,
    }


def save_shipped(compressed: Compressed, run_dir: Path) -> dict[str, Any]:
    """Write bundle/ (atomically), then its record: a resumed run reuses both, same version."""
    write_bundle(compressed.shipment.files, run_dir / BUNDLE_DIR)
    record = compressed.record()
    atomic_write_json(run_dir / COMPRESSED_FILE, record)
    return record


def discard_shipped(run_dir: Path) -> None:
    """Remove a bundle and its record (compression runs again)."""
    (run_dir / COMPRESSED_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / BUNDLE_DIR, ignore_errors=True)


def load_shipped(run_dir: Path) -> tuple[dict[str, Any], dict[str, bytes]] | None:
    """The record and bundle files an interrupted run already made, or None (redo).

    A bundle without its record (a crash between the two writes) is removed: it was never
    deployed, and compression makes the same student again.
    """
    bundle, record = run_dir / BUNDLE_DIR, run_dir / COMPRESSED_FILE
    if bundle.is_dir() and record.is_file():
        try:
            files = {name: (bundle / name).read_bytes() for name in FILES}
            return json.loads(record.read_text()), files
        except (OSError, ValueError) as err:
            log.warning("the saved bundle cannot be reused (%s); compressing again", err)
    record.unlink(missing_ok=True)
    shutil.rmtree(bundle, ignore_errors=True)
    return None


def signing_key(cfg: RunConfig, run_dir: Path) -> Any:
    """The configured private key, or a fresh pair for this run; the public half in keys/."""
    keys = run_dir / KEYS_DIR
    if (keys / PRIVATE_KEY_FILE).is_file():  # a resumed run signs with the key it started with
        key = load_private_key(keys / PRIVATE_KEY_FILE)
        atomic_write_bytes(keys / PUBLIC_KEY_FILE, public_pem(key))
        return key
    if cfg.private_key:
        key = load_private_key(Path(cfg.private_key))
        atomic_write_bytes(keys / PUBLIC_KEY_FILE, public_pem(key))
        return key
    private_path, _ = generate_keypair(keys)
    return load_private_key(private_path)
