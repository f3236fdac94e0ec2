"""Bundles with a model for another runtime (model.tflite): listed, hashed and signed."""

import hashlib
import json

import pytest

from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError, read_bundle_dir, verify_bundle
from fedge.compression.bundle import make_bundle, write_bundle
from fedge.core.bundle_format import artifact_errors, schema_errors
from fedge.core.manifest import Manifest
from tests.client.conftest import bundle_config

# A stand-in flatbuffer: only its identifier (bytes 4..8) and its hash are checked here; the
# real conversion and its runtimes are tested in tests/compression/test_tflite.py.
TFLITE = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4
SHAPE = (1, 1, 8, 8)


def bundle(model_bytes, private, tflite=TFLITE):
    return make_bundle(model_bytes, bundle_config(), private, {"tflite": (tflite, SHAPE)})


def test_the_manifest_lists_the_artifact_and_verification_returns_it(model_bytes, keys):
    private, public = keys
    files = bundle(model_bytes, private)
    assert set(files) == {"model.onnx", "manifest.json", "manifest.sig", "model.tflite"}
    verified = verify_bundle(files, public)
    entry = verified.manifest.artifact("tflite")
    assert entry is not None and entry.file == "model.tflite" and entry.input_shape == SHAPE
    assert entry.sha256 == hashlib.sha256(TFLITE).hexdigest() and entry.bytes == len(TFLITE)
    assert verified.artifacts == {"tflite": TFLITE}
    assert verified.files() == files


def test_a_bundle_without_artifacts_has_the_manifest_it_always_had(model_bytes, keys):
    private, _ = keys
    manifest = json.loads(make_bundle(model_bytes, bundle_config(), private)["manifest.json"])
    assert "artifacts" not in manifest


def test_a_listed_artifact_may_be_left_out_for_a_node_that_does_not_run_it(model_bytes, keys):
    private, public = keys
    files = bundle(model_bytes, private)
    del files["model.tflite"]
    assert verify_bundle(files, public).artifacts == {}


@pytest.mark.parametrize(
    ("tamper", "check", "message"),
    [
        ("flip", "sha256", "model.tflite hashes to"),
        ("truncate", "size", "model.tflite has 1031 bytes, manifest says 1032"),
        ("unlisted", "files", "model.tflite is not listed in the signed manifest"),
        ("magic", "files", "model.tflite is not a tflite file"),
    ],
)
def test_a_tampered_or_unsigned_artifact_is_refused(model_bytes, keys, tamper, check, message):
    private, public = keys
    if tamper == "unlisted":
        files = make_bundle(model_bytes, bundle_config(), private)
        files["model.tflite"] = TFLITE
    elif tamper == "magic":
        files = bundle(model_bytes, private, tflite=b"\x1c\x00\x00\x00ONNX" + TFLITE[8:])
    else:
        files = bundle(model_bytes, private)
        data = files["model.tflite"]
        files["model.tflite"] = (
            data[:100] + bytes([data[100] ^ 1]) + data[101:] if tamper == "flip" else data[:-1]
        )
    with pytest.raises(BundleError, match=message) as caught:
        verify_bundle(files, public)
    assert caught.value.check == check


def test_the_store_keeps_the_artifact_and_reads_it_back(model_bytes, keys, tmp_path):
    private, public = keys
    store = ModelStore(tmp_path / "store")
    store.install(bundle(model_bytes, private), public)
    assert store.load(public).artifacts == {"tflite": TFLITE}
    written = write_bundle(bundle(model_bytes, private), tmp_path / "bundle")
    assert read_bundle_dir(written, public)["model.tflite"] == TFLITE


def _manifest(model_bytes, private) -> dict:
    return json.loads(bundle(model_bytes, private)["manifest.json"])


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"runtime": "coreml"}, "artifact runtime 'coreml' is not one of ['ort', 'tflite']"),
        ({"runtime": []}, "artifact runtime '[]' is not one of ['ort', 'tflite']"),  # unhashable
        ({"runtime": {}}, "artifact runtime '{}' is not one of ['ort', 'tflite']"),
        ({"file": "../model.tflite"}, "file must be 'model.tflite'"),
        ({"bytes": 0}, "bytes must be 1.."),
        ({"bytes": True}, "bytes must be 1.."),
        ({"sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
        ({"input_shape": [1, None]}, "input_shape must list positive integers"),
    ],
)
def test_the_schema_names_what_is_wrong_with_an_artifact(model_bytes, keys, change, error):
    manifest = _manifest(model_bytes, keys[0])
    manifest["artifacts"][0].update(change)
    assert any(error in e for e in schema_errors(manifest)), schema_errors(manifest)


def test_artifacts_must_be_a_short_list_of_objects_each_runtime_once(model_bytes, keys):
    entry = _manifest(model_bytes, keys[0])["artifacts"][0]
    assert artifact_errors([entry, entry])
    assert artifact_errors("tflite") and artifact_errors([1])
    assert artifact_errors([entry]) == []
    assert Manifest.from_dict(_manifest(model_bytes, keys[0])).artifacts[0].runtime == "tflite"
