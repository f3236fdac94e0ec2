"""A run's signing key and its teacher as saved: what every compression of the run starts from."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from fedge.compression.bundle import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    generate_keypair,
    load_private_key,
    public_pem,
)
from fedge.compression.export import ExportConfig, export_onnx
from fedge.core.config import RunConfig
from fedge.core.io import atomic_write_bytes
from fedge.pipeline.rundir.paths import KEYS_DIR, TEACHER_FILE


def write_teacher(teacher: nn.Module, input_shape: tuple[int, ...], run_dir: Path) -> bytes:
    """The federated teacher as fp32 ONNX, written to the run directory (fedge compress reads it)."""
    teacher_onnx = export_onnx(teacher, input_shape, ExportConfig())
    atomic_write_bytes(run_dir / TEACHER_FILE, teacher_onnx)
    return teacher_onnx


def signing_key(cfg: RunConfig, run_dir: Path) -> Ed25519PrivateKey:
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
