"""The server's reading of `fedge profile` files, in-process (the command without torch: e2e)."""

import json

import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.core.profile import ProfileError, load_profile


def test_a_malformed_or_foreign_profile_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    for text, message in (
        ("{not json", "is not JSON"),
        ('{"fedge_profile": 99}', "has version 99; this fedge reads version 1"),
        ('{"fedge_profile": 1, "probes": []}', "is malformed"),
        ('{"fedge_profile": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests .* too deeply"),
    ):
        bad.write_text(text)
        with pytest.raises(ProfileError, match=message):
            load_profile(bad)
    good = tmp_path / "good.json"
    assert CliRunner().invoke(app, ["profile", "--out", str(good), "--iters", "20"]).exit_code == 0
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
    absurd = json.loads(good.read_text())
    absurd["probes"][name]["batches"]["1"]["p50_us"] = 1e12  # 11 days for a small probe
    bad.write_text(json.dumps(absurd))
    with pytest.raises(ProfileError, match=rf"probe '{name}' claims .* µs; allowed: 0.01 µs"):
        load_profile(bad)
    load_profile(good)  # the measured one is plausible
    with pytest.raises(ProfileError, match="cannot read device profile"):
        load_profile(tmp_path / "missing.json")
    refused = CliRunner().invoke(app, ["profile", "--out", str(tmp_path / "no" / "p.json")])
    assert refused.exit_code == 2 and "does not exist" in refused.output
