"""Bundle stage: model.onnx + manifest.json + Ed25519 signature, written atomically; key handling."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.core import bundle_format as fmt
from fedge.core.bounded import MAX_KEY_BYTES, read_named
from fedge.core.manifest import (
    PREPROCESSING_KEYS,
    Artifact,
    InputSpec,
    Manifest,
    ManifestError,
    OutputSpec,
    PreprocessingSpec,
)

PRIVATE_KEY_FILE = "signing.key"
PUBLIC_KEY_FILE = "signing.pub"


@dataclass(frozen=True)
class BundleConfig:
    """What the manifest says about the model."""

    model_id: str  # a stable name for the model line (e.g. the run id)
    version: int  # monotonic; devices refuse anything not newer than what they have
    input_name: str
    input_shape: tuple[int | None, ...]  # None for the dynamic batch axis
    output_name: str
    probabilities_name: str | None  # an output holding softmax probabilities, if the model has one
    preprocessing: dict[str, Any]
    labels: tuple[int, ...]
    metrics: dict[str, Any]
    compression: dict[str, Any]
    quantized: bool
    label_name: str | None = None  # an output holding the predicted class index, if any
    # The student's architecture: a family name (deep-small) or a searched spec
    # (arch:c16k3p-c32k3-h64-relu, fedge.core.archspec), so a device knows what it runs.
    architecture: str = ""
    tier: str = ""  # the device tier this bundle is for ("": any device)


def build_manifest(
    model_bytes: bytes,
    config: BundleConfig,
    *,
    created: str | None = None,
    artifacts: dict[str, tuple[bytes, tuple[int, ...]]] | None = None,
) -> bytes:
    """The manifest.json bytes (canonical: sorted keys) binding metadata to the model's hash.

    Parameters
    ----------
    model_bytes
        model.onnx as shipped.
    config
        What the manifest says about the model.
    created
        The signing time to state (default: now, UTC, to the second).
    artifacts
        runtime -> (file bytes, fixed input shape) of the same model for other runtimes.

    Raises
    ------
    ValueError
        "invalid manifest: ..." when a device would refuse the manifest.

    """
    unknown = sorted(set(config.preprocessing) - set(PREPROCESSING_KEYS))
    if unknown:  # the manifest carries no free-form preprocessing keys: the device reads these
        raise ValueError(f"invalid manifest: preprocessing keys {unknown} are not in the format")
    manifest = Manifest(
        model_id=config.model_id,
        version=config.version,
        created=created or datetime.now(UTC).isoformat(timespec="seconds"),
        input=InputSpec(config.input_name, tuple(config.input_shape)),
        # "" names no output: the schema refuses it with the device contract's reason
        output=OutputSpec(
            config.probabilities_name or "", config.label_name or "", config.output_name
        ),
        preprocessing=PreprocessingSpec.from_dict(config.preprocessing),
        labels=tuple(config.labels),
        model_bytes=len(model_bytes),
        model_sha256=hashlib.sha256(model_bytes).hexdigest(),
        quantized=config.quantized,
        metrics=config.metrics,
        compression=config.compression,
        architecture=config.architecture,
        tier=config.tier,
        artifacts=tuple(_artifact(r, *a) for r, a in sorted((artifacts or {}).items())),
    )
    try:
        return manifest.to_json()
    except ManifestError as err:
        raise ValueError(f"invalid manifest: {err}") from None


def _artifact(runtime: str, data: bytes, shape: tuple[int, ...]) -> Artifact:
    return Artifact(
        runtime, fmt.ARTIFACTS[runtime][0], len(data), hashlib.sha256(data).hexdigest(), shape
    )


def make_bundle(
    model_bytes: bytes,
    config: BundleConfig,
    key: Ed25519PrivateKey,
    artifacts: dict[str, tuple[bytes, tuple[int, ...]]] | None = None,
) -> dict[str, bytes]:
    """The bundle files as bytes, keyed by file name: the three, then any other runtime's."""
    manifest = build_manifest(model_bytes, config, artifacts=artifacts)
    return {
        fmt.MODEL_FILE: model_bytes,
        fmt.MANIFEST_FILE: manifest,
        fmt.SIGNATURE_FILE: key.sign(manifest),
        **{fmt.ARTIFACTS[runtime][0]: data for runtime, (data, _) in (artifacts or {}).items()},
    }


def write_bundle(files: dict[str, bytes], directory: Path) -> Path:
    """Write the bundle directory atomically: a temp sibling, then one rename."""
    directory = Path(directory)
    if directory.exists():
        raise FileExistsError(f"bundle directory already exists: {directory}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        tmp.chmod(0o755)  # mkdtemp creates 0700
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def generate_keypair(directory: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair (PEM; private key mode 0600). Refuses to overwrite."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_KEY_FILE, directory / PUBLIC_KEY_FILE
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"refusing to overwrite existing key {path}")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem(key))
    return private_path, public_path


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The PEM of a private key's public half."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM; a clear error for anything else."""
    try:  # bounded: a FIFO, a device or a huge file is refused, not read into memory
        pem = read_named(path, MAX_KEY_BYTES)
        key = serialization.load_pem_private_key(pem, password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"cannot read private key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds a {type(key).__name__}; fedge signs with Ed25519 keys")
    return key
