"""Device commands as real processes, torch unimportable: infer, install, verify, status, profile."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedge.client.runtime.predictor import Predictor
from fedge.compression.bundle import make_bundle, write_bundle
from fedge.core.data import load_dataset
from fedge.core.profile import load_profile, probe_index
from tests.client.conftest import bundle_config
from tests.e2e.processes import fedge_no_torch

RAW = load_dataset("digits").x[:64]  # raw 0..16 grey levels, flat (N, 64)
# `fedge ARGS...`, then its own peak RSS on stderr: VmHWM, which starts afresh at exec (unlike
# ru_maxrss, which keeps the forking pytest process's peak).
PEAK_RSS = """
import atexit, re, sys
def peak():
    status = open("/proc/self/status").read()
    print("peak-rss-kb=" + re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), file=sys.stderr)
atexit.register(peak)
sys.argv = ["fedge", *sys.argv[1:]]
from fedge.cli import main
main()
"""


def _infer(device, *args: str, **kwargs):
    """`fedge infer` on the device's store, torch unimportable."""
    store = ["--model-dir", str(device.store), "--trusted-key", str(device.public_key)]
    return fedge_no_torch("infer", *store, *args, **kwargs)


def test_fedge_infer_without_torch_from_a_file_and_from_a_pipe(device, tmp_path):
    """The file and stdin cases in-process (and the refusals): tests/client/test_inputs.py."""
    np.save(tmp_path / "x.npy", RAW[:3])
    proc = _infer(device, str(tmp_path / "x.npy"), "--json")
    assert proc.returncode == 0, proc.stderr
    expected = Predictor(device.store, device.public_key).predict(RAW[:3]).labels.tolist()
    assert json.loads(proc.stdout)["labels"] == expected
    stdin = _infer(device, "-", input=json.dumps({"inputs": RAW[:2].tolist()}))
    assert stdin.returncode == 0, stdin.stderr
    assert stdin.stdout.split() == [str(v) for v in expected[:2]]


def test_install_verify_status_without_torch(device, tmp_path):
    """Each command's results and refusals in-process: tests/client/test_bundle_cli.py."""
    bundle = write_bundle(
        make_bundle(device.model_bytes, bundle_config(2), device.private_key), tmp_path / "b"
    )
    common = ["--trusted-key", str(device.public_key)]
    for args in (
        ["verify", str(bundle), *common],
        ["install", str(bundle), "--model-dir", str(device.store), *common],
        ["status", "--model-dir", str(device.store), *common],
    ):
        proc = fedge_no_torch(*args)
        assert proc.returncode == 0, proc.stderr
    assert "current:       2" in proc.stdout and "verified:      yes" in proc.stdout


def test_fedge_profile_measures_every_probe_without_torch(tmp_path):
    out = tmp_path / "device.json"
    proc = fedge_no_torch(
        "profile", "--out", str(out), "--iters", "20", "--batch", "8", "--name", "gw-1"
    )
    assert proc.returncode == 0, proc.stderr
    profile = load_profile(out)
    assert set(profile.latency_us) == set(probe_index()) and profile.batches == (1, 8)
    assert profile.name == "gw-1" and profile.threads == 1
    assert profile.device["onnxruntime"] and profile.device["cores"] >= 1
    for per_batch in profile.latency_us.values():
        assert 0 < per_batch[1] < per_batch[8] * 2  # a batch of 8 is not 2x faster than one


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_100k_samples_stay_under_200_mb(device, tmp_path):
    """The old reader held ~800 MB for this; the batched one stays near the runtime's baseline."""
    np.save(tmp_path / "x.npy", np.resize(RAW, (100_000, 64)))
    args = ["infer", str(tmp_path / "x.npy"), "--json", "--model-dir", str(device.store)]
    args += ["--trusted-key", str(device.public_key)]
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["labels"]) == 100_000
    peak_kb = int(proc.stderr.split("peak-rss-kb=")[1])
    assert peak_kb < 200_000, f"peak RSS {peak_kb} KB"
