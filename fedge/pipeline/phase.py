"""The server's compression phase: the teacher's ONNX file, the stage chain, the signed bundle."""

from __future__ import annotations

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
from fedge.core.config import RunConfig
from fedge.core.io import atomic_write_bytes
from fedge.core.partition import Federation
from fedge.pipeline.federate import FederatedTrainer
from fedge.pipeline.rundir import BUNDLE_DIR, KEYS_DIR, TEACHER_FILE
from fedge.pipeline.shipping import Shipment, ship
from fedge.pipeline.stages import CompressionOutcome, Inputs, compress
from fedge.pipeline.teacher_source import KdSource


@dataclass
class Compressed:
    """What the phase made: the stage chain's outcome and the signed bundle with its figures."""

    source: KdSource
    outcome: CompressionOutcome
    shipment: Shipment


def write_teacher(teacher: nn.Module, fed: Federation, run_dir: Path) -> bytes:
    """The federated teacher as fp32 ONNX, written to the run directory (fedge compress reads it)."""
    teacher_onnx = export_onnx(teacher, fed.dataset.preprocessing.input_shape, ExportConfig())
    atomic_write_bytes(run_dir / TEACHER_FILE, teacher_onnx)
    return teacher_onnx


def compress_and_ship(
    source: KdSource,
    fed: Federation,
    teacher_onnx: bytes,
    key: Any,
    run_dir: Path,
    model_id: str,
    federated: FederatedTrainer | None = None,
) -> Compressed:
    """Walk the stage chain from `source`, sign the device model, write `bundle/`.

    `federated` runs the student's rounds on the clients when the settings ask for them.
    """
    server, prep = fed.server, fed.dataset.preprocessing
    inputs = Inputs(
        source.teacher,
        source.pool,
        server.val,
        server.test,
        prep,
        fed.dataset.num_classes,
        federated,
    )
    outcome = compress(source.compression, inputs)
    shipment = ship(
        teacher_onnx,
        outcome,
        source.compression,
        server.test,
        preprocessing=prep,
        num_classes=fed.dataset.num_classes,
        key=key,
        model_id=model_id,
    )
    write_bundle(shipment.files, run_dir / BUNDLE_DIR)
    return Compressed(source, outcome, shipment)


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
