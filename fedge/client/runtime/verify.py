"""Verify a bundle before onnxruntime sees it: signature, manifest, sha256, external data, version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.core import bundle_format as fmt
from fedge.core.onnx_scan import MalformedModelError, external_data_refs


class BundleError(Exception):
    """A bundle was refused; `check` names the check that failed."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check} check failed: {detail}")
        self.check = check


@dataclass(frozen=True)
class VerifiedBundle:
    """Bundle bytes that passed every check, with the parsed manifest."""

    model_bytes: bytes
    manifest_bytes: bytes
    signature: bytes
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        """The manifest's monotonic version."""
        return int(self.manifest["version"])

    def files(self) -> dict[str, bytes]:
        """The three files by name."""
        return {
            fmt.MODEL_FILE: self.model_bytes,
            fmt.MANIFEST_FILE: self.manifest_bytes,
            fmt.SIGNATURE_FILE: self.signature,
        }


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Read the trusted Ed25519 public key (PEM)."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as err:
        raise BundleError("trusted-key", f"cannot read public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("trusted-key", f"{path} is not an Ed25519 public key")
    return key


def verify_bundle(
    files: dict[str, bytes], trusted_key: Ed25519PublicKey, *, newer_than: int | None = None
) -> VerifiedBundle:
    """Run every check in order and return the verified bundle, or raise BundleError.

    Nothing here parses ONNX: a tampered model never reaches onnx or onnxruntime.
    """
    missing = [name for name in fmt.FILES if name not in files]
    if missing:
        raise BundleError("files", f"bundle lacks {', '.join(missing)}")
    manifest_bytes, signature = files[fmt.MANIFEST_FILE], files[fmt.SIGNATURE_FILE]
    try:
        trusted_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            "signature", "manifest.sig does not match manifest.json under the trusted key"
        ) from None
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError as err:
        raise BundleError("manifest", f"manifest.json is not JSON: {err}") from err
    errors = fmt.schema_errors(manifest)
    if errors:
        raise BundleError("manifest", "; ".join(errors))
    model_bytes = files[fmt.MODEL_FILE]
    if len(model_bytes) != manifest["model_bytes"]:
        raise BundleError(
            "size",
            f"model.onnx has {len(model_bytes)} bytes, manifest says {manifest['model_bytes']}",
        )
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != manifest["model_sha256"]:
        raise BundleError(
            "sha256",
            f"model.onnx hashes to {digest[:16]}..., manifest says {manifest['model_sha256'][:16]}...",
        )
    try:
        refs = external_data_refs(model_bytes)
    except MalformedModelError as err:
        raise BundleError("onnx", f"model.onnx is not a well-formed ONNX protobuf: {err}") from err
    if refs:
        raise BundleError(
            "external-data", f"model.onnx references external data files for {refs[:3]}"
        )
    if newer_than is not None and manifest["version"] <= newer_than:
        raise BundleError(
            "version",
            f"version {manifest['version']} is not newer than installed {newer_than} (no rollback)",
        )
    return VerifiedBundle(model_bytes, manifest_bytes, signature, manifest)


def read_bundle_dir(directory: Path | str) -> dict[str, bytes]:
    """Read the three bundle files from a directory (missing files simply absent)."""
    directory = Path(directory)
    return {
        name: (directory / name).read_bytes() for name in fmt.FILES if (directory / name).is_file()
    }
