"""Verify a bundle before onnxruntime sees it: signature, manifest, size, sha256, external data."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.client.runtime.files import UnsafeFileError, read_bounded
from fedge.core import bundle_format as fmt
from fedge.core.bounded import MAX_KEY_BYTES, read_named
from fedge.core.manifest import Manifest, ManifestError
from fedge.core.onnx_scan import MalformedModelError, external_data_refs, has_graph


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
    manifest: Manifest
    artifacts: dict[str, bytes] = field(default_factory=dict)  # runtime -> verified file

    @property
    def version(self) -> int:
        """The manifest's monotonic version."""
        return self.manifest.version

    @property
    def model_id(self) -> str:
        """The model line this bundle belongs to."""
        return self.manifest.model_id

    def model_for(self, runtime: str) -> bytes:
        """The model a device of `runtime` runs; BundleError("runtime") when it is not here."""
        if runtime == "onnx":
            return self.model_bytes
        if runtime not in self.artifacts:
            raise BundleError("runtime", _missing_artifact(self, runtime))
        return self.artifacts[runtime]

    def files(self) -> dict[str, bytes]:
        """The files by name: the three, then the verified artifacts for other runtimes."""
        return {
            fmt.MODEL_FILE: self.model_bytes,
            fmt.MANIFEST_FILE: self.manifest_bytes,
            fmt.SIGNATURE_FILE: self.signature,
            **{fmt.ARTIFACTS[r][0]: data for r, data in sorted(self.artifacts.items())},
        }


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    """Read the trusted Ed25519 public key (PEM); BundleError("trusted-key") when it cannot."""
    try:
        pem = read_named(path, MAX_KEY_BYTES)
        key = serialization.load_pem_public_key(pem)
    except (OSError, ValueError, TypeError) as err:
        raise BundleError("trusted-key", f"cannot read public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError("trusted-key", f"{path} is not an Ed25519 public key")
    return key


def verify_manifest(
    manifest_bytes: bytes, signature: bytes, trusted_key: Ed25519PublicKey
) -> Manifest:
    """The parsed manifest, once its signature and its schema are checked (BundleError if not)."""
    if len(manifest_bytes) > fmt.MAX_MANIFEST_BYTES or len(signature) > fmt.MAX_SIGNATURE_BYTES:
        raise BundleError(
            "size",
            f"manifest.json may have {fmt.MAX_MANIFEST_BYTES} bytes and manifest.sig "
            f"{fmt.MAX_SIGNATURE_BYTES}; got {len(manifest_bytes)} and {len(signature)}",
        )
    try:
        trusted_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            "signature", "manifest.sig does not match manifest.json under the trusted key"
        ) from None
    try:
        return Manifest.from_json(manifest_bytes)
    except ManifestError as err:
        raise BundleError("manifest", str(err)) from None


def verify_bundle(files: dict[str, bytes], trusted_key: Ed25519PublicKey) -> VerifiedBundle:
    """Run every file check in order and return the verified bundle, or raise BundleError.

    Order: signature -> manifest schema -> size and sha256 of model.onnx -> a well-formed
    ONNX protobuf without external data. Nothing here parses ONNX with onnx or onnxruntime.
    """
    missing = [name for name in fmt.FILES if name not in files]
    if missing:
        raise BundleError("files", f"bundle lacks {', '.join(missing)}")
    manifest_bytes, signature = files[fmt.MANIFEST_FILE], files[fmt.SIGNATURE_FILE]
    manifest = verify_manifest(manifest_bytes, signature, trusted_key)
    model_bytes = files[fmt.MODEL_FILE]
    if len(model_bytes) != manifest.model_bytes:
        raise BundleError(
            "size",
            f"model.onnx has {len(model_bytes)} bytes, manifest says {manifest.model_bytes}",
        )
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != manifest.model_sha256:
        raise BundleError(
            "sha256",
            f"model.onnx hashes to {digest[:16]}..., manifest says {manifest.model_sha256[:16]}...",
        )
    try:
        refs = external_data_refs(model_bytes)
        graph = has_graph(model_bytes)
    except MalformedModelError as err:
        raise BundleError("onnx", f"model.onnx is not a well-formed ONNX protobuf: {err}") from err
    if refs:
        raise BundleError("external-data", f"model.onnx stores tensors in files: {refs[:3]}")
    if not graph:
        raise BundleError("onnx", "model.onnx has no graph")
    artifacts = verify_artifacts(files, manifest)
    return VerifiedBundle(model_bytes, manifest_bytes, signature, manifest, artifacts)


def verify_artifacts(files: dict[str, bytes], manifest: Manifest) -> dict[str, bytes]:
    """The other runtimes' files that came with the bundle, each checked against the manifest.

    A listed artifact may be absent (a node gets the files for its own runtime); one that is
    present must have the signed size, sha256 and its format's magic bytes, and a file the
    manifest does not list is refused.
    """
    verified = {}
    for runtime, (name, magic) in fmt.ARTIFACTS.items():
        if name not in files:
            continue
        entry = manifest.artifact(runtime)
        if entry is None:
            raise BundleError("files", f"{name} is not listed in the signed manifest")
        data = files[name]
        if len(data) != entry.bytes:
            raise BundleError("size", f"{name} has {len(data)} bytes, manifest says {entry.bytes}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256:
            raise BundleError(
                "sha256", f"{name} hashes to {digest[:16]}..., manifest says {entry.sha256[:16]}..."
            )
        if data[4:8] != magic:
            raise BundleError("files", f"{name} is not a {runtime} file (no {magic!r} marker)")
        verified[runtime] = data
    return verified


def read_bundle_dir(
    directory: Path | str, trusted_key: Ed25519PublicKey | None = None
) -> dict[str, bytes]:
    """The bundle files, read with bounds (missing files simply absent).

    Every file must be a regular file (no symlinks) within its size limit. With the trusted
    key, the manifest is verified first and model.onnx is read only if it has the size the
    signed manifest declares; without it, model.onnx is bounded by MAX_MODEL_BYTES.
    """
    directory = Path(directory)
    files: dict[str, bytes] = {}
    limits = {
        fmt.MANIFEST_FILE: fmt.MAX_MANIFEST_BYTES,
        fmt.SIGNATURE_FILE: fmt.MAX_SIGNATURE_BYTES,
    }
    for name, limit in limits.items():
        data = _read_file(directory / name, limit, None)
        if data is not None:
            files[name] = data
    manifest = None
    if trusted_key is not None and len(files) == 2:
        manifest = verify_manifest(files[fmt.MANIFEST_FILE], files[fmt.SIGNATURE_FILE], trusted_key)
    exact = manifest.model_bytes if manifest else None
    model = _read_file(directory / fmt.MODEL_FILE, fmt.MAX_MODEL_BYTES, exact)
    if model is not None:
        files[fmt.MODEL_FILE] = model
    for runtime, (name, _) in fmt.ARTIFACTS.items():
        entry = manifest.artifact(runtime) if manifest else None
        data = _read_file(directory / name, fmt.MAX_MODEL_BYTES, entry.bytes if entry else None)
        if data is not None:
            files[name] = data
    return files


def verify_bundle_dir(directory: Path | str, trusted_key: Ed25519PublicKey) -> VerifiedBundle:
    """`verify_bundle` on a bundle directory, read with `read_bundle_dir`'s bounds."""
    return verify_bundle(read_bundle_dir(directory, trusted_key), trusted_key)


def _read_file(path: Path, limit: int, exact: int | None) -> bytes | None:
    """A bundle file's bytes, None if it does not exist, BundleError if it cannot be read."""
    try:
        return read_bounded(path, limit, exact=exact)
    except UnsafeFileError as err:
        if err.reason == "missing" and not path.is_symlink():
            return None
        raise BundleError("size" if err.reason == "size" else "files", str(err)) from None


def _missing_artifact(bundle: VerifiedBundle, runtime: str) -> str:
    """Why a bundle cannot serve a device of `runtime`, in one line."""
    has = ", ".join(["onnx", *sorted(bundle.artifacts)])
    return (
        f"the bundle has no {runtime} artifact (it has: {has}); this device runs {runtime}: "
        f"ship one with device-targets onnx,{runtime}"
    )
