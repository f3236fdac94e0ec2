"""The `fedge` command in-process: every setting reachable, bad input exits 2 and writes nothing."""

import pytest
from typer.testing import CliRunner

import fedge
from fedge.cli import app
from fedge.core.config import SETTINGS
from tests.cli.conftest import one_line, written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-config", "roundz=3"], "unknown setting 'roundz'; allowed: rounds, round-timeout"),
        (["--run-config", "rounds"], "--run-config pair 'rounds' is not key=value"),
        (["--run-config", "rounds=three"], "rounds must be an integer (>= 1), got 'three'"),
        (
            ["--run-config", "student=huge"],
            "unknown student 'huge'; allowed: auto, deep-tiny, ds-tiny, tiny",
        ),
        (["--kd-epochz", "3"], "unknown setting --kd-epochz; allowed: kd-epochs"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (
            ["--partition", "zipf"],
            "unknown partition 'zipf'; allowed: iid, dirichlet, pathological",
        ),
        (["--strategy", "sgd"], "unknown strategy 'sgd'"),
        (["--alpha", "0"], "alpha must be > 0, got 0.0"),
        (["--rounds", "0"], "rounds must be >= 1"),
        (["--clients", "5000", "--partition", "iid"], "clients=5000 is too many"),
        (["--scenario", "nope.toml"], "scenario file not found"),
        (["--dataset", "npz:missing.npz"], "npz file not found"),
        # brackets in a value or a message are text, not rich markup (this one crashed rich)
        (["--dataset", "npz:x[/b].npz"], "x[/b].npz"),
        (["--student", "arch:c16k3p"], "format: arch:c<channels>k<kernel>[s][p]-d<channels>"),
        (
            ["--dataset", "fmnist", "--data-dir", "nowhere"],
            "nowhere does not exist; install Debian's package (apt-get install",
        ),
        (["--data-dir", "/tmp"], "data-dir '/tmp' applies to fmnist only"),
        (
            ["--dataset", "fmnist", "--clients", "30000", "--partition", "iid"],
            "clients=30000 is too many for 35500 client samples of fmnist",
        ),
        (["--prune-ratio", "1.5"], "prune-ratio must be in [0, 1), got 1.5"),
        (["--dp", "central", "--dp-epsilon", "1e-7"], "dp-epsilon=1e-07 at delta=1e-05 cannot"),
        (["--dp", "local", "--dp-epsilon", "1e-7"], "dp-epsilon=1e-07 at delta=1e-05 cannot"),
        (["--dp", "everything"], "unknown dp 'everything'; allowed: none, central, local"),
        (["--dp", "central", "--aggregation", "krum"], "dp central needs the plain mean"),
        (["--teacher-mode", "crowd"], "unknown teacher-mode 'crowd'"),
        (["--fraction-train", "0"], r"fraction-train must be in (0, 1], got 0.0"),
        (["--min-train-clients", "11"], "min-train-clients=11 is more clients than exist"),
        (["--update-compression", "zip"], "unknown update-compression 'zip'; allowed: none"),
        (["--ray-address", "127.0.0.1:1"], "ray-address 127.0.0.1:1 is unreachable"),
        (["--ray-address", "nohost"], "ray-address must be HOST:PORT"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--kd-temperature", "inf"], "kd-temperature must be a finite number > 0, got inf"),
        (["--seed", "-1"], "seed must be in [0, 4294967293], got -1"),
        (["--seed", "4294967294"], "seed must be in [0, 4294967293], got 4294967294"),
        # read bounded: a device, a FIFO or a huge file is refused, not read into memory
        (["--private-key", "/dev/zero"], "/dev/zero is a device, not a regular file"),
        (["--scenario", "."], "is a directory, not a regular file; allowed: a TOML file"),
        (["--dataset", "npz:"], "dataset npz: names no file; allowed: npz:PATH"),
    ],
)
def test_simulate_bad_settings_exit_2_and_write_nothing(cli, tmp_path, args, message):
    """No --out: the default run directory (~/fedge-runs/...) is not created either."""
    result = cli("simulate", *args)
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output)
    assert written(tmp_path) == []


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
    listing = one_line(cli("settings").output)
    assert all(key in listing for key in SETTINGS)


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"fedge {fedge.__version__}"


def test_log_lines_to_a_file_or_pipe_are_whole_lines_without_colour(capsys):
    import logging

    from fedge.cli.common import setup_logging

    setup_logging(verbose=False)  # stderr is captured: not a terminal
    logging.getLogger("fedge").info("round 3/10  " + "x" * 200)
    lines = [line for line in capsys.readouterr().err.splitlines() if "round 3/10" in line]
    assert len(lines) == 1 and lines[0].endswith("x" * 200) and "\x1b[" not in lines[0]


def test_a_run_that_reached_too_few_clients_exits_4_naming_why(tmp_path):
    import json

    import typer

    from fedge.cli.run import _summary
    from fedge.pipeline.outputs.rows import Deployment
    from tests.pipeline.test_report import results

    failed = results(deployment=Deployment(installed=1, reachable=2, required=2, passed=False))
    (tmp_path / "results.json").write_text(json.dumps(failed.to_json()))
    with pytest.raises(typer.Exit) as exit_:
        _summary(tmp_path)
    assert exit_.value.exit_code == 4
    assert json.loads((tmp_path / "results.json").read_text())["deployment"]["passed"] is False


def test_the_summary_prints_a_run_name_and_paths_as_text(tmp_path, capsys):
    """An --out named 'x[/b]' (rich markup) trained a whole run, then crashed the summary table."""
    import json

    from fedge.cli.run import _summary
    from fedge.pipeline.outputs.rows import Deployment
    from tests.pipeline.test_report import results

    run_dir = tmp_path / "run:cd:[s]"
    run_dir.mkdir()
    shipped = results(run_id="x[/b]", deployment=Deployment(2, 2, 2, True))
    (run_dir / "results.json").write_text(json.dumps(shipped.to_json()))
    _summary(run_dir)
    printed = capsys.readouterr()
    assert "fedge run x[/b]" in printed.out  # the table's title
    assert "Report: " in printed.err and "run:cd:[s]" in printed.err  # no emoji, no markup


def test_the_no_token_warning_prints_the_host_as_typed(capsys):
    from fedge.cli.device import _serving_token

    assert _serving_token(None, "[bold]10.0.0.1", allow_no_token=True) is None
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: serving [bold]10.0.0.1 without a token" in err
