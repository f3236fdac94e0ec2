"""The `fedge` command in-process: every setting reachable, bad input exits 2 and writes nothing."""

import json

import pytest
from typer.testing import CliRunner

import fedge
from fedge.cli import app
from fedge.core.config import SETTINGS, RunConfig


@pytest.fixture()
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the default run directory lands here
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-config", "roundz=3"], "unknown setting 'roundz'; allowed: rounds, round-timeout"),
        (["--run-config", "rounds"], "--run-config pair 'rounds' is not key=value"),
        (["--run-config", "rounds=three"], "rounds must be an integer (>= 1), got 'three'"),
        (
            ["--run-config", "student=huge"],
            "unknown student 'huge'; allowed: auto, deep-tiny, tiny",
        ),
        (["--kd-epochz", "3"], "unknown setting --kd-epochz; allowed: kd-epochs"),
        (["--alpha", "0"], "alpha must be > 0, got 0.0"),
        (["--prune-ratio", "1.5"], "prune-ratio must be in [0, 1), got 1.5"),
        (["--dp", "everything"], "unknown dp 'everything'; allowed: none, central, local"),
        (["--dp", "central", "--aggregation", "krum"], "dp central needs the plain mean"),
        (["--fraction-train", "0"], r"fraction-train must be in (0, 1], got 0.0"),
        (["--min-train-clients", "11"], "min-train-clients=11 is more clients than exist"),
        (["--update-compression", "zip"], "unknown update-compression 'zip'; allowed: none"),
        (["--ray-address", "127.0.0.1:1"], "ray-address 127.0.0.1:1 is unreachable"),
        (["--ray-address", "nohost"], "ray-address must be HOST:PORT"),
    ],
)
def test_simulate_bad_settings_exit_2_and_write_nothing(cli, tmp_path, args, message):
    result = cli("simulate", *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even ~/fedge-runs


def test_every_setting_is_a_simulate_flag_and_listed(cli):
    """A flag for every setting: a bad value for each reaches that setting's own check."""
    for key, spec in SETTINGS.items():
        if spec.kind is bool or spec.server_only:
            continue
        value = "not-a-number" if spec.kind in (int, float) else "not-allowed"
        result = cli("simulate", f"--{key}", value)
        if spec.kind is str and not spec.choices and key != "dataset":
            continue  # free-text settings accept any string at parse time
        assert result.exit_code == 2 and key in result.output, (key, result.output)
    listing = " ".join(cli("settings").output.split())
    assert all(key in listing for key in SETTINGS)


def test_compress_refuses_a_setting_that_needs_a_new_run(cli, tmp_path):
    run = tmp_path / "run"  # what compress reads of a finished run, before any compression
    (run / "keys").mkdir(parents=True)
    (run / "keys" / "signing.key").write_bytes(b"")
    (run / "teacher.onnx").write_bytes(b"")
    results = {"config": RunConfig().to_run_config(), "teacher": {"params": 1}}
    (run / "results.json").write_text(json.dumps(results))
    result = cli("compress", str(run), "--run-config", "rounds=3", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "fedge compress cannot change rounds" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()
    missing = cli("compress", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and "is not a finished fedge run" in " ".join(
        missing.output.split()
    )


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fedge {fedge.__version__}"
