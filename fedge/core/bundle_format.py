"""The signed bundle's file names and manifest schema (pure Python: the device runtime uses it)."""

from __future__ import annotations

from typing import Any

FORMAT = "fedge-bundle/1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
FILES = (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE)

# key -> required type(s)
MANIFEST_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "model_id": str,
    "version": int,
    "created": str,
    "input": dict,
    "output": dict,
    "preprocessing": dict,
    "labels": list,
    "metrics": dict,
    "compression": dict,
    "quantized": bool,
    "model_bytes": int,
    "model_sha256": str,
}


def schema_errors(manifest: Any) -> list[str]:
    """Everything wrong with a manifest's shape (empty when it is well formed)."""
    if not isinstance(manifest, dict):
        return [f"manifest must be a JSON object, got {type(manifest).__name__}"]
    errors = []
    for key, kind in MANIFEST_SCHEMA.items():
        if key not in manifest:
            errors.append(f"missing key {key!r}")
        elif not isinstance(manifest[key], kind) or (
            kind is int and isinstance(manifest[key], bool)
        ):
            errors.append(f"key {key!r} has type {type(manifest[key]).__name__}")
    if not errors and manifest["format"] != FORMAT:
        errors.append(f"format {manifest['format']!r} is not {FORMAT!r}")
    if not errors and (len(manifest["model_sha256"]) != 64 or manifest["version"] < 1):
        errors.append("model_sha256 must be 64 hex digits and version >= 1")
    if not errors:
        for key in ("name", "shape", "dtype"):
            if key not in manifest["input"]:
                errors.append(f"input lacks {key!r}")
    return errors
