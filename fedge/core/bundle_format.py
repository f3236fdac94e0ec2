"""The signed bundle's file names, size limits and manifest schema (pure Python: the device uses it).

`schema_errors` checks every field the device runtime reads, with its type and range, so a
signed manifest that passes it can be served. `fedge.core.manifest.Manifest` runs it both
ways: on what the server signs (`to_json`) and on what the device receives (`from_json`),
before anything is installed.
"""

from __future__ import annotations

import math
import re
from typing import Any

FORMAT = "fedge-bundle/1"
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
FILES = (MODEL_FILE, MANIFEST_FILE, SIGNATURE_FILE)
# Artifacts for other runtimes, beside model.onnx: runtime -> (file name, magic bytes at 4..8).
# Each is listed in the signed manifest ("artifacts": runtime, file, bytes, sha256, input_shape).
ARTIFACTS = {"ort": ("model.ort", b"ORTM"), "tflite": ("model.tflite", b"TFL3")}
RUNTIMES = ("onnx", *ARTIFACTS)  # what a node can declare it runs

MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 1024  # an Ed25519 signature has 64
MAX_MODEL_BYTES = 256 << 20
MAX_SAMPLE_SIZE = 1 << 24  # values in one sample
MAX_RANK = 8  # axes of one sample
MAX_LABELS = 1 << 16
MAX_VERSION = 2**63 - 1  # versions are int64 on every platform
MAX_NAME = 200  # characters in model_id and tensor names
INT64 = (-(2**63), 2**63 - 1)
SHA256 = re.compile(r"[0-9a-f]{64}")
# A device tier's name, as the tiers setting allows it (fedge.core.config_rules.parse_tiers).
TIER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

# key -> required type(s); bool is never accepted where int is asked for
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
    """Everything wrong with a manifest (empty when the device can serve what it describes)."""
    if not isinstance(manifest, dict):
        return [f"manifest must be a JSON object, got {type(manifest).__name__}"]
    errors = []
    for key, kind in MANIFEST_SCHEMA.items():
        if key not in manifest:
            errors.append(f"missing key {key!r}")
        elif not _is(manifest[key], kind):
            errors.append(f"key {key!r} has type {type(manifest[key]).__name__}")
    if errors:
        return errors
    if manifest["format"] != FORMAT:
        errors.append(f"format {manifest['format']!r} is not {FORMAT!r}")
    if not _is_name(manifest["model_id"]):
        errors.append(f"model_id must be 1 to {MAX_NAME} printable characters")
    if not 1 <= manifest["version"] <= MAX_VERSION:
        errors.append(f"version must be 1..{MAX_VERSION}, got {manifest['version']}")
    if len(manifest["created"]) > 64:
        errors.append("created must be at most 64 characters")
    if not 1 <= manifest["model_bytes"] <= MAX_MODEL_BYTES:
        errors.append(f"model_bytes must be 1..{MAX_MODEL_BYTES}, got {manifest['model_bytes']}")
    if not SHA256.fullmatch(manifest["model_sha256"]):
        errors.append("model_sha256 must be 64 lowercase hex digits")
    prep_errors = _preprocessing_errors(manifest["preprocessing"])
    shape = None if prep_errors else manifest["preprocessing"]["input_shape"]
    errors += prep_errors + _input_errors(manifest["input"], shape)
    errors += _output_errors(manifest["output"])
    errors += _label_errors(manifest["labels"])
    tier = manifest.get("tier", "")  # optional: a bundle for one device tier only
    if not (isinstance(tier, str) and (tier == "" or TIER_NAME.fullmatch(tier))):
        errors.append(
            f"tier must be a tier name ({TIER_NAME.pattern}) or absent, got {str(tier)[:40]!r}"
        )
    errors += artifact_errors(manifest.get("artifacts", []))
    return errors


def artifact_errors(artifacts: Any) -> list[str]:
    """What is wrong with the optional "artifacts" list (one entry per non-ONNX runtime)."""
    if not isinstance(artifacts, list) or len(artifacts) > len(ARTIFACTS):
        return [f"artifacts must be a list of at most {len(ARTIFACTS)} entries"]
    errors, seen = [], set()
    for entry in artifacts:
        if not isinstance(entry, dict):
            return ["each artifact must be a JSON object"]
        runtime = entry.get("runtime")
        if not isinstance(runtime, str) or runtime not in ARTIFACTS or runtime in seen:
            errors.append(
                f"artifact runtime {str(runtime)[:40]!r} is not one of {sorted(ARTIFACTS)} "
                "listed once"
            )
            continue
        seen.add(runtime)
        if entry.get("file") != ARTIFACTS[runtime][0]:
            errors.append(f"the {runtime} artifact's file must be {ARTIFACTS[runtime][0]!r}")
        size, digest, shape = entry.get("bytes"), entry.get("sha256"), entry.get("input_shape")
        if not (isinstance(size, int) and _is_int(size) and 1 <= size <= MAX_MODEL_BYTES):
            errors.append(f"the {runtime} artifact's bytes must be 1..{MAX_MODEL_BYTES}")
        if not (isinstance(digest, str) and SHA256.fullmatch(digest)):
            errors.append(f"the {runtime} artifact's sha256 must be 64 lowercase hex digits")
        if not (
            isinstance(shape, list)
            and 2 <= len(shape) <= MAX_RANK + 1
            and all(_is_int(d) and d >= 1 for d in shape)
        ):
            errors.append(f"the {runtime} artifact's input_shape must list positive integers")
    return errors


def _is(value: Any, kind: type | tuple[type, ...]) -> bool:
    return isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= MAX_NAME and value.isprintable()


def _is_number(value: Any) -> bool:
    return _is(value, (int, float)) and math.isfinite(value)


def statistic_lengths(shape: list[int] | tuple[int, ...]) -> list[int]:
    """The lengths a list statistic may have for a sample shape: per channel or per value."""
    return sorted({shape[0], math.prod(shape)})


def _preprocessing_errors(prep: dict[str, Any]) -> list[str]:
    errors = []
    shape = prep.get("input_shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_RANK
        or not all(_is_int(d) and d >= 1 for d in shape)
    ):
        errors.append(
            f"preprocessing.input_shape must be a list of 1 to {MAX_RANK} positive integers,"
            f" got {str(shape)[:80]}"
        )
    elif math.prod(shape) > MAX_SAMPLE_SIZE:
        errors.append(f"preprocessing.input_shape {shape} has more than {MAX_SAMPLE_SIZE} values")
    fits = statistic_lengths(shape) if isinstance(shape, list) and not errors else []
    if prep.get("in_model") is not True:
        errors.append("preprocessing.in_model must be true (the model takes raw input)")
    for key in ("shift", "scale"):  # a number, or a list; the model applies them
        value = prep.get(key, 0.0)
        if not (
            _is_number(value)
            or (isinstance(value, list) and value and all(_is_number(v) for v in value))
        ):
            errors.append(f"preprocessing.{key} must be a finite number or a list of them")
        elif isinstance(value, list) and fits and len(value) not in fits:
            errors.append(
                f"preprocessing.{key} has {len(value)} values for input_shape {shape}; allowed: "
                f"{' or '.join(map(str, fits))} (per channel or per value)"
            )
    return errors


def _input_errors(spec: dict[str, Any], sample: list[int] | None) -> list[str]:
    errors = []
    if not _is_name(spec.get("name")):
        errors.append(f"input.name must be 1 to {MAX_NAME} printable characters")
    if spec.get("dtype") != "float32":
        errors.append(f"input.dtype must be 'float32', got {str(spec.get('dtype'))[:40]!r}")
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or not 2 <= len(shape) <= MAX_RANK + 1
        or not all(d is None or (_is_int(d) and d >= 1) for d in shape)
    ):
        errors.append("input.shape must be a list of positive integers or null (batch axis)")
    elif sample is not None and shape[1:] != sample:
        errors.append(f"input.shape {shape} does not match preprocessing.input_shape {sample}")
    return errors


def _output_errors(spec: dict[str, Any]) -> list[str]:
    names = [spec.get("probabilities"), spec.get("label")]
    if not all(_is_name(name) for name in names) or names[0] == names[1]:
        return [
            "output.probabilities and output.label must name two different model outputs "
            "(the device contract)"
        ]
    return []


def _label_errors(labels: list[Any]) -> list[str]:
    if not 1 <= len(labels) <= MAX_LABELS:
        return [f"labels must have 1 to {MAX_LABELS} entries, got {len(labels)}"]
    if not all(_is_int(label) and INT64[0] <= label <= INT64[1] for label in labels):
        return ["labels must be int64 integers"]
    if len(set(labels)) != len(labels):
        return ["labels must be unique"]
    return []
