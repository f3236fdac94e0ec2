"""`fedge install`, `fedge verify`, `fedge status` in-process: bundles that arrive outside Flower."""

import json

import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.compression.bundle import make_bundle, write_bundle
from tests.client import hostile
from tests.client.conftest import bundle_config


def _run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def _bundle(device, tmp_path, version=2, name="bundle", model=None, **changes):
    config = bundle_config(version)
    if changes:
        from dataclasses import replace

        config = replace(config, **changes)
    files = make_bundle(model or device.model_bytes, config, device.private_key)
    return write_bundle(files, tmp_path / name)


def _install(device, bundle, *extra):
    return _run(
        "install", bundle, "--model-dir", device.store, "--trusted-key", device.public_key, *extra
    )


def _status(device):
    code, out = _run("status", "--model-dir", device.store, "--json")
    assert code == 0, out
    return json.loads(out)


def test_install_then_re_install_then_status(device, tmp_path):
    bundle = _bundle(device, tmp_path)
    assert _install(device, bundle) == (0, f"installed test version 2 in {device.store}")
    assert _install(device, bundle) == (0, f"already installed: test version 2 in {device.store}")
    report = _status(device)
    assert report["current_version"] == 2 and report["highest_version"] == 2
    assert [h["version"] for h in report["history"]] == [1, 2]
    code, text = _run("status", "--model-dir", device.store, "--trusted-key", device.public_key)
    assert code == 0 and "current: 2" in text and "verified: yes" in text


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda b: (b / "model.onnx").write_bytes((b / "model.onnx").read_bytes()[:-1] + b"\0"),
            "sha256 check failed",
        ),
        (lambda b: (b / "manifest.sig").write_bytes(b"\0" * 64), "signature check failed"),
        (lambda b: (b / "model.onnx").unlink(), "bundle lacks model.onnx"),
        (lambda b: (b / "manifest.json").write_bytes(b" " * (2 << 20)), "more than the 1048576"),
    ],
)
def test_a_refused_bundle_installs_nothing_and_is_recorded(device, tmp_path, tamper, message):
    bundle = _bundle(device, tmp_path)
    tamper(bundle)
    code, out = _install(device, bundle)
    assert code == 2 and out.startswith("error: ") and message in out, out
    report = _status(device)
    assert report["current_version"] == 1 and report["installed_versions"] == [1]
    assert message in report["last_refusal"]["reason"]


def test_a_symlinked_model_in_the_bundle_is_refused(device, tmp_path):
    bundle = _bundle(device, tmp_path)
    (bundle / "model.onnx").rename(tmp_path / "elsewhere.onnx")
    (bundle / "model.onnx").symlink_to(tmp_path / "elsewhere.onnx")
    code, out = _install(device, bundle)
    assert code == 2 and "is a symlink" in out


def test_older_versions_and_other_lines_are_refused(device, tmp_path):
    assert _install(device, _bundle(device, tmp_path, 3, "v3"))[0] == 0
    code, out = _install(device, _bundle(device, tmp_path, 2, "v2"))
    assert code == 2 and "version 2 is not newer than installed 3" in out
    other = _bundle(device, tmp_path, 4, "other", model_id="next-run")
    code, out = _install(device, other)
    assert code == 2 and "model-line check failed" in out
    assert _install(device, other, "--allow-model-switch")[0] == 0
    assert _status(device)["model_id"] == "next-run"


def test_a_device_of_one_tier_refuses_another_tiers_bundle(device, tmp_path):
    big = _bundle(device, tmp_path, 2, "big", tier="big")
    code, out = _install(device, big, "--tier", "small")
    assert code == 2 and "for device tier 'big', this device is tier 'small'" in out, out
    assert _status(device)["current_version"] == 1
    code, out = _install(device, big, "--tier", "Big Tier")
    assert code == 2 and "--tier 'Big Tier' is not a tier name" in out, out
    assert (
        _install(device, _bundle(device, tmp_path, 2, "small", tier="small"), "--tier", "small")[0]
        == 0
    )
    code, out = _run("verify", big, "--trusted-key", device.public_key, "--json")
    assert code == 0 and json.loads(out)["tier"] == "big"


def test_verify_runs_every_check_without_a_store(device, tmp_path):
    bundle = _bundle(device, tmp_path)
    code, out = _run("verify", bundle, "--trusted-key", device.public_key)
    assert code == 0 and out.startswith("ok: test version 2") and "10 labels" in out
    code, out = _run("verify", bundle, "--trusted-key", device.public_key, "--json")
    assert code == 0 and json.loads(out)["input_shape"] == [1, 8, 8]
    hostile_bundle = _bundle(
        device, tmp_path, name="hostile", model=hostile.constant_sparse_value().SerializeToString()
    )
    code, out = _run("verify", hostile_bundle, "--trusted-key", device.public_key)
    assert code == 2 and "external-data check failed" in out
    contract = _bundle(device, tmp_path, name="no-contract", model=hostile.memory_hog_model())
    code, out = _run("verify", contract, "--trusted-key", device.public_key)
    assert code == 2 and "device-model check failed" in out


def test_bad_arguments_are_one_line_errors(device, tmp_path):
    code, out = _run("status", "--model-dir", tmp_path / "nothing")
    assert code == 2 and "no model store at" in out
    code, out = _install(device, tmp_path / "no-bundle")
    assert code == 2 and "no bundle directory at" in out
    code, out = _run(
        "install", _bundle(device, tmp_path), "--model-dir", device.store, "--trusted-key", tmp_path
    )
    assert code == 2 and "trusted-key check failed" in out
