"""`fedge profile` on a device (torch unimportable) and the server's reading of profiles."""

import json

import pytest

from fedge.core.profile import ProfileError, load_profile, probe_index
from tests.client.test_predictor import _fedge_no_torch


def test_fedge_profile_measures_every_probe_without_torch(tmp_path):
    out = tmp_path / "device.json"
    proc = _fedge_no_torch(
        "profile", "--out", str(out), "--iters", "20", "--batch", "8", "--name", "gw-1"
    )
    assert proc.returncode == 0, proc.stderr
    profile = load_profile(out)
    assert set(profile.latency_us) == set(probe_index()) and profile.batches == (1, 8)
    assert profile.name == "gw-1" and profile.threads == 1
    assert profile.device["onnxruntime"] and profile.device["cores"] >= 1
    for per_batch in profile.latency_us.values():
        assert 0 < per_batch[1] < per_batch[8] * 2  # a batch of 8 is not 2x faster than one


def test_a_malformed_or_foreign_profile_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    for text, message in (
        ("{not json", "is not JSON"),
        ('{"fedge_profile": 99}', "has version 99; this fedge reads version 1"),
        ('{"fedge_profile": 1, "probes": []}', "is malformed"),
    ):
        bad.write_text(text)
        with pytest.raises(ProfileError, match=message):
            load_profile(bad)
    good = tmp_path / "good.json"
    assert _fedge_no_torch("profile", "--out", str(good), "--iters", "20").returncode == 0
    data = json.loads(good.read_text())
    name = next(iter(data["probes"]))
    data["probes"][name]["sha256"] = "0" * 64  # measured a probe this fedge does not ship
    bad.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=f"probe '{name}'.*run fedge profile again"):
        load_profile(bad)
    probes = json.loads(good.read_text())["probes"]
    for change, message in (
        ({"threads": float("inf")}, "is malformed"),  # json writes Infinity
        ({"threads": 4}, "measured with 4 threads; the device runtime runs 1"),
        ({"batches": [8]}, "lacks batch 1"),
        (
            {"probes": {n: p for n, p in probes.items() if n.endswith("fp32")}},
            "lacks probes",
        ),
    ):
        fresh = json.loads(good.read_text())
        bad.write_text(json.dumps({**fresh, **change}))
        with pytest.raises(ProfileError, match=message):
            load_profile(bad)
    with pytest.raises(ProfileError, match="cannot read device profile"):
        load_profile(tmp_path / "missing.json")
    refused = _fedge_no_torch("profile", "--out", str(tmp_path / "no" / "p.json"))
    assert refused.returncode == 2 and "does not exist" in refused.stderr
