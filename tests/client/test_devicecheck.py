"""The device-model check on several inputs, with run-time and peak-memory limits, in its child.

A model can behave on zeros and blow up on other inputs: these models loop or fill memory in
proportion to the input's largest value, so only the check's extreme inputs catch them.
"""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.client.runtime.devicecheck import (
    CheckLimits,
    DeviceModelError,
    check_device_model,
    check_inputs,
)
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key
from fedge.compression.bundle import build_manifest, make_bundle
from fedge.core.manifest import Manifest
from tests.client import hostile
from tests.client.conftest import bundle_config
from tests.client.test_bundle_cli import _bundle, _install, _run

NAMES = ["zeros", "mean", "mean-8sd", "mean+8sd"]


def _manifest(model: bytes) -> Manifest:
    return Manifest.from_json(build_manifest(model, bundle_config(1)))


def test_the_check_inputs_are_zeros_the_mean_and_8_sd_either_side():
    inputs = check_inputs([1, 8, 8], 0.0, 1 / 16)  # digits: raw 0..16, x_model = x / 16
    assert list(inputs) == NAMES and all(x.shape == (1, 1, 8, 8) for x in inputs.values())
    assert [float(x.mean()) for x in inputs.values()] == [0.0, 0.0, -128.0, 128.0]
    per_feature = check_inputs([64], [float(i) for i in range(64)], [0.5] * 64)
    assert np.array_equal(per_feature["mean+8sd"][0], np.arange(64) + 16)
    per_channel = check_inputs([2, 3], [1.0, -1.0], [1.0, 0.0])  # scale 0 counts as 1
    assert per_channel["mean-8sd"][0].tolist() == [[-7.0] * 3, [-9.0] * 3]
    assert list(check_inputs([4], [1.0, 2.0, 3.0], None)) == ["zeros"]  # fits no axis


def test_a_model_that_loops_on_large_inputs_is_refused(student_models):
    """It runs in no time on zeros (the only input the check used to try)."""
    with pytest.raises(DeviceModelError, match="ran longer than 1000 ms on the mean-8sd input"):
        check_device_model(hostile.input_loop_model(), _manifest(hostile.input_loop_model()))


def test_peak_memory_is_measured_and_a_model_over_the_limit_refused(student_models):
    bomb, limits = hostile.input_memory_model(), CheckLimits(max_run_ms=60_000)
    base = check_device_model(student_models[1], _manifest(student_models[1]), limits=limits)
    report = check_device_model(bomb, _manifest(bomb), limits=limits)
    assert list(report.runs_ms) == NAMES and list(base.runs_ms) == NAMES
    assert base.peak_mb > 0 and report.peak_mb > base.peak_mb + 80  # it fills ~100 MB
    tight = CheckLimits(max_run_ms=60_000, max_peak_mb=int(base.peak_mb + 50))
    with pytest.raises(
        DeviceModelError, match=rf"MB of memory .* the limit is {tight.max_peak_mb}"
    ):
        check_device_model(bomb, _manifest(bomb), limits=tight)


def test_the_install_history_records_what_the_check_measured(device):
    files = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    store = ModelStore(device.store)
    store.install(files, load_public_key(device.public_key))
    measured = store.state().history[-1]["device_check"]
    assert sorted(measured["runs_ms"]) == sorted(NAMES) and measured["peak_mb"] > 0


def test_the_cli_limits_refuse_a_model_and_verify_reports_the_figures(device, tmp_path):
    bomb = _bundle(device, tmp_path, name="bomb", model=hostile.input_memory_model())
    code, text = _install(device, bomb, "--check-max-memory-mb", "64")
    assert code == 2 and "device-model" in text and "the limit is 64 MB" in text, text
    code, text = _run("verify", bomb, "--trusted-key", device.public_key, "--json")
    assert code == 0, text
    assert list(json.loads(text)["device_check"]["runs_ms"]) == NAMES
    help_text = CliRunner().invoke(app, ["install", "--help"], env={"COLUMNS": "300"}).output
    assert "--check-max-run-ms" in help_text and "--check-max-memory-mb" in help_text
