"""The Manifest: one typed value that writes and reads manifest.json, with the schema's own reasons."""

import ast
import copy
import dataclasses
import json
from pathlib import Path

import pytest

from fedge.core import bundle_format as fmt
from fedge.core import manifest as manifest_module
from fedge.core.manifest import (
    InputSpec,
    Manifest,
    ManifestError,
    OutputSpec,
    PreprocessingSpec,
    unverified_claims,
)

MANIFEST = Manifest(
    model_id="run-1",
    version=3,
    created="2025-01-02T03:04:05+00:00",
    input=InputSpec("input", (None, 1, 8, 8)),
    output=OutputSpec("probabilities", "label", "logits"),
    preprocessing=PreprocessingSpec((1, 8, 8), shift=0.0, scale=0.0625),
    labels=tuple(range(10)),
    model_bytes=1234,
    model_sha256="ab" * 32,
    quantized=True,
    metrics={"test_accuracy": 0.9},
    compression={"distill": {"student": "deep-small", "epochs": 3}},
    architecture="deep-small",
)


def _changed(path: str, value) -> dict:
    """MANIFEST as a JSON object with one key (dotted path) set, or deleted for KeyError."""
    out = copy.deepcopy(MANIFEST.to_dict())
    *parents, key = path.split(".")
    target = out
    for parent in parents:
        target = target[parent]
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return out


# Every field the schema checks, broken one at a time (the device's bad-input table).
BAD = [
    ("format", "fedge-bundle/2"),
    ("model_id", ""),
    ("model_id", "x" * 201),
    ("version", 0),
    ("version", True),
    ("version", 2**63),
    ("created", "x" * 65),
    ("model_bytes", 0),
    ("model_sha256", "A" * 64),
    ("quantized", 1),
    ("metrics", []),
    ("compression", None),
    ("labels", []),
    ("labels", [0, 0]),
    ("labels", ["0", "1"]),
    ("input.name", KeyError),
    ("input.dtype", "float64"),
    ("input.shape", [None, 64]),
    ("input.shape", [None]),
    ("output.label", None),
    ("output.label", "probabilities"),
    ("preprocessing.input_shape", KeyError),
    ("preprocessing.input_shape", [1.0, 8, 8]),
    ("preprocessing.input_shape", [1 << 20, 1 << 20]),
    ("preprocessing.in_model", False),
    ("preprocessing.shift", "abc"),
    ("preprocessing.scale", []),
    ("preprocessing.shift", [0.5] * 5),  # neither one per channel (1) nor per value (64)
    ("preprocessing.scale", [1.0] * 8),
    ("input", KeyError),
]


def test_to_json_is_the_canonical_manifest_json_and_round_trips_byte_for_byte():
    data = MANIFEST.to_json()
    assert data == json.dumps(MANIFEST.to_dict(), sort_keys=True, indent=1).encode()
    assert Manifest.from_json(data) == MANIFEST
    assert Manifest.from_json(data).to_json() == data
    assert MANIFEST.sample_shape == (1, 8, 8) and MANIFEST.format == "fedge-bundle/1"


def test_absent_shift_and_scale_stay_absent_and_per_feature_lists_become_tuples():
    bare = _changed("preprocessing.shift", KeyError)
    del bare["preprocessing"]["scale"]
    read = Manifest.from_dict(bare)
    assert (
        read.preprocessing.shift is None
        and "shift" not in json.loads(read.to_json())["preprocessing"]
    )
    per_feature = Manifest.from_dict(_changed("preprocessing.shift", [0.5] * 64))
    assert per_feature.preprocessing.shift == (0.5,) * 64
    assert json.loads(per_feature.to_json())["preprocessing"]["shift"] == [0.5] * 64


@pytest.mark.parametrize(("path", "value"), BAD, ids=[f"{p}={v!r}"[:40] for p, v in BAD])
def test_from_dict_refuses_what_the_schema_refuses_with_its_reasons(path, value):
    bad = _changed(path, value)
    errors = fmt.schema_errors(bad)
    assert errors  # the case is one the schema refuses
    with pytest.raises(ManifestError) as err:
        Manifest.from_dict(bad)
    assert str(err.value) == "; ".join(errors)
    with pytest.raises(ManifestError) as err:
        Manifest.from_json(json.dumps(bad).encode())
    assert str(err.value) == "; ".join(errors)


@pytest.mark.parametrize(("path", "value"), BAD[:12], ids=[p for p, _ in BAD[:12]])
def test_to_json_writes_nothing_the_device_would_refuse(path, value):
    bad = dataclasses.replace(MANIFEST, **{path: value})
    with pytest.raises(ManifestError) as err:
        bad.to_json()
    assert str(err.value) == "; ".join(fmt.schema_errors(bad.to_dict()))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "manifest.json is not usable JSON: nests too deeply"),
        (b'{"version": NaN}', "manifest.json is not usable JSON: NaN is not a JSON number"),
        (b"{not json", "manifest.json is not usable JSON: Expecting property name"),
        (b"\xff\xfe\x00", "manifest.json is not usable JSON"),
        (b"[1, 2]", "manifest must be a JSON object, got list"),
        (b" " * (fmt.MAX_MANIFEST_BYTES + 1), "has 1048577 bytes, more than the 1048576 allowed"),
    ],
)
def test_from_json_refuses_what_is_not_a_bounded_json_object(data, message):
    with pytest.raises(ManifestError, match=message.replace("(", r"\(")):
        Manifest.from_json(data)


def test_unknown_keys_are_ignored_and_an_odd_architecture_reads_as_none():
    newer = {**MANIFEST.to_dict(), "runtimes": ["onnx", "tflite"], "architecture": 5}
    newer["preprocessing"] = {**newer["preprocessing"], "layout": "NCHW"}
    read = Manifest.from_dict(newer)
    assert read.architecture == "" and read.preprocessing == MANIFEST.preprocessing
    assert read.model_sha256 == MANIFEST.model_sha256


def test_the_compression_block_stays_plain_json():
    read = Manifest.from_json(MANIFEST.to_json())
    assert read.compression == {"distill": {"student": "deep-small", "epochs": 3}}
    assert isinstance(read.compression["distill"], dict)


def test_unverified_claims_are_best_effort():
    assert unverified_claims(MANIFEST.to_json()) == {
        "claimed_version": 3,
        "claimed_model_id": "run-1",
    }
    assert unverified_claims(json.dumps(_changed("labels", [])).encode())["claimed_version"] == 3
    assert unverified_claims(b"not json") == {}
    assert unverified_claims(b'{"version": "x", "model_id": "a"}') == {}


def _imports(module) -> set[str]:
    tree = ast.parse(Path(module.__file__).read_text())
    return {
        node.module if isinstance(node, ast.ImportFrom) and node.module else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }


def test_the_manifest_imports_nothing_the_device_lacks():
    """Pure Python: no torch, flwr, onnx or numpy on the way to reading a manifest."""
    assert _imports(manifest_module) == {
        "__future__",
        "json",
        "dataclasses",
        "typing",
        "fedge.core",
    }
    assert _imports(fmt) == {"__future__", "math", "re", "typing"}
