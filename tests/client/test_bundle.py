"""Signed bundles: every tampering is refused before onnx or onnxruntime sees the model."""

import hashlib
import json
from dataclasses import replace

import onnxruntime
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError, read_bundle_dir, verify_bundle
from fedge.compression.bundle import (
    build_manifest,
    make_bundle,
    write_bundle,
)
from fedge.core.bundle_format import schema_errors
from fedge.core.manifest import Manifest
from fedge.core.ort import make_session
from tests.client.conftest import bundle_config


@pytest.fixture()
def no_onnxruntime(monkeypatch):
    """Fail the test if anything builds an onnxruntime session."""

    def refuse(*args, **kwargs):
        raise AssertionError("onnxruntime saw a bundle that should have been refused")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_a_good_bundle_verifies_and_runs(model_bytes, keys):
    private, public = keys
    bundle = verify_bundle(make_bundle(model_bytes, bundle_config(), private), public)
    assert bundle.manifest.model_sha256 and bundle.version == 1
    make_session(bundle.model_bytes)


def test_flipped_model_byte_is_refused_by_the_hash(model_bytes, keys, no_onnxruntime):
    private, public = keys
    files = make_bundle(model_bytes, bundle_config(), private)
    files["model.onnx"] = _flip(files["model.onnx"], len(model_bytes) // 2)
    with pytest.raises(BundleError) as err:
        verify_bundle(files, public)
    assert err.value.check == "sha256"


def test_flipped_manifest_byte_is_refused_by_the_signature(model_bytes, keys, no_onnxruntime):
    private, public = keys
    files = make_bundle(model_bytes, bundle_config(), private)
    files["manifest.json"] = files["manifest.json"].replace(b'"version": 1', b'"version": 9')
    with pytest.raises(BundleError) as err:
        verify_bundle(files, public)
    assert err.value.check == "signature"


def test_another_key_is_refused(model_bytes, keys, no_onnxruntime):
    _, public = keys
    files = make_bundle(model_bytes, bundle_config(), Ed25519PrivateKey.generate())
    with pytest.raises(BundleError, match="signature check failed"):
        verify_bundle(files, public)


def test_signed_but_malformed_manifest_is_refused(model_bytes, keys):
    private, public = keys
    files = make_bundle(model_bytes, bundle_config(), private)
    manifest = json.loads(files["manifest.json"])
    del manifest["model_sha256"]
    files["manifest.json"] = json.dumps(manifest).encode()
    files["manifest.sig"] = private.sign(files["manifest.json"])
    with pytest.raises(BundleError) as err:
        verify_bundle(files, public)
    assert err.value.check == "manifest" and "model_sha256" in str(err.value)


def test_truncated_model_is_refused(model_bytes, keys, no_onnxruntime):
    private, public = keys
    files = make_bundle(model_bytes, bundle_config(), private)
    files["model.onnx"] = files["model.onnx"][:-10]
    with pytest.raises(BundleError) as err:
        verify_bundle(files, public)
    assert err.value.check == "size"


def test_store_installs_atomically_and_refuses_rollback(model_bytes, keys, tmp_path):
    private, public = keys
    store = ModelStore(tmp_path / "store")
    store.install(make_bundle(model_bytes, bundle_config(version=5), private), public)
    assert store.current_version() == 5
    with pytest.raises(BundleError) as err:
        store.install(make_bundle(model_bytes, bundle_config(version=4), private), public)
    assert err.value.check == "version"
    store.install(make_bundle(model_bytes, bundle_config(version=6), private), public)
    store.install(make_bundle(model_bytes, bundle_config(version=7), private), public)
    assert store.current_version() == 7
    assert store.installed_versions() == [6, 7]  # the previous version is kept
    assert store.load(public).model_bytes == model_bytes
    assert not [p for p in (tmp_path / "store" / "versions").iterdir() if p.name.startswith(".")]


def test_refused_bundle_leaves_the_store_unchanged(model_bytes, keys, tmp_path):
    private, public = keys
    store = ModelStore(tmp_path / "store")
    store.install(make_bundle(model_bytes, bundle_config(version=1), private), public)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*"))
    bad = make_bundle(model_bytes, bundle_config(version=2), private)
    bad["model.onnx"] = _flip(bad["model.onnx"], 100)
    with pytest.raises(BundleError):
        store.install(bad, public)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*")) == before
    assert store.current_version() == 1


def test_tampering_on_disk_is_caught_on_load(model_bytes, keys, tmp_path):
    private, public = keys
    store = ModelStore(tmp_path / "store")
    store.install(make_bundle(model_bytes, bundle_config(), private), public)
    path = tmp_path / "store" / "versions" / "1" / "model.onnx"
    path.write_bytes(_flip(path.read_bytes(), 200))
    with pytest.raises(BundleError, match="sha256"):
        store.load(public)


def test_written_bundle_round_trips(model_bytes, keys, tmp_path):
    private, public = keys
    write_bundle(make_bundle(model_bytes, bundle_config(), private), tmp_path / "bundle")
    assert verify_bundle(read_bundle_dir(tmp_path / "bundle"), public).model_bytes == model_bytes
    with pytest.raises(FileExistsError):
        write_bundle(make_bundle(model_bytes, bundle_config(), private), tmp_path / "bundle")


def _old_writer(model_bytes: bytes, config, created: str) -> bytes:
    """manifest.json as compression/bundle.py wrote it before the Manifest: a literal dict."""
    manifest = {
        "format": "fedge-bundle/1",
        "model_id": config.model_id,
        "version": config.version,
        "created": created,
        "input": {"name": config.input_name, "shape": list(config.input_shape), "dtype": "float32"},
        "output": {
            "name": config.output_name,
            "probabilities": config.probabilities_name,
            "label": config.label_name,
        },
        "preprocessing": config.preprocessing,
        "labels": list(config.labels),
        "metrics": config.metrics,
        "compression": config.compression,
        "quantized": config.quantized,
        "architecture": config.architecture,
        "model_bytes": len(model_bytes),
        "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
    }
    return json.dumps(manifest, sort_keys=True, indent=1).encode()


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"quantized": True, "architecture": "arch:c16k3p-c32k3-h64-relu", "version": 2**40},
        {"metrics": {"test_accuracy": 0.912345678, "teacher_test_accuracy": 1}},
        {"compression": {"distill": {"student": "deep-small", "lr": 0.01}, "prune": {}}},
        {"preprocessing": {"shift": [0.5, 1], "scale": [2.0, 0.25], "input_shape": [2]}},
        {"preprocessing": {"input_shape": [1, 8, 8], "in_model": True}},  # no shift, no scale
    ],
)
def test_the_manifest_writes_the_bytes_the_old_writer_wrote(model_bytes, change):
    config = replace(bundle_config(), **change)
    if "preprocessing" in change:
        prep = {**change["preprocessing"], "in_model": True}
        config = replace(config, preprocessing=prep, input_shape=(None, *prep["input_shape"]))
    created = "2025-01-02T03:04:05+00:00"
    written = build_manifest(model_bytes, config, created=created)
    assert written == _old_writer(model_bytes, config, created)
    assert Manifest.from_json(written).to_json() == written


def test_the_writer_refuses_preprocessing_the_format_does_not_carry(model_bytes):
    config = replace(bundle_config(), preprocessing={**bundle_config().preprocessing, "x": 1})
    with pytest.raises(ValueError, match=r"invalid manifest: preprocessing keys \['x'\]"):
        build_manifest(model_bytes, config)
    with pytest.raises(ValueError, match="invalid manifest: output.probabilities and output.label"):
        build_manifest(model_bytes, replace(bundle_config(), probabilities_name=None))


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.pop("model_sha256"),
        lambda m: m.update(labels=[0, 0]),
        lambda m: m["preprocessing"].update(input_shape=[-1]),
        lambda m: m.update(version=0, model_id=""),
    ],
)
def test_a_signed_bad_manifest_is_refused_with_the_schema_s_reasons(model_bytes, keys, change):
    private, public = keys
    files = make_bundle(model_bytes, bundle_config(), private)
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()
    files["manifest.sig"] = private.sign(files["manifest.json"])
    with pytest.raises(BundleError) as err:
        verify_bundle(files, public)
    assert str(err.value) == f"manifest check failed: {'; '.join(schema_errors(manifest))}"


def test_keys_are_read_through_a_symlink_and_a_device_or_fifo_is_refused(tmp_path):
    # a mounted secret is often a symlink; /dev/zero or a FIFO would be read forever
    import os
    from pathlib import Path

    from fedge.client.runtime.verify import load_public_key
    from fedge.compression.bundle import generate_keypair, load_private_key

    private, public = generate_keypair(tmp_path / "keys")
    (tmp_path / "link").symlink_to(private)
    assert load_private_key(tmp_path / "link").private_bytes_raw() == (
        load_private_key(private).private_bytes_raw()
    )
    (tmp_path / "trusted").symlink_to(public)  # the device's trusted key, mounted the same way
    assert load_public_key(tmp_path / "trusted") == load_public_key(public)
    os.mkfifo(tmp_path / "fifo")
    for path, kind in ((Path("/dev/zero"), "a device"), (tmp_path / "fifo", "a FIFO")):
        with pytest.raises(ValueError, match=f"{path} is {kind}, not a regular file"):
            load_private_key(path)
