"""`fedge compress` and `fedge audit` in-process: bad input exits 2 with one line, writes nothing."""

import json
import shutil

import pytest

from tests.cli.conftest import one_line, written

RUN = "{run}"  # the finished run, filled in by the test

COMPRESS_CASES = [
    (["{empty}"], "is not a finished fedge run with a teacher: results.json is missing"),
    (["{missing}"], "is not a finished fedge run with a teacher: results.json is missing"),
    ([RUN, "--prune-ratio", "1.5"], "prune-ratio must be in [0, 1), got 1.5"),
    ([RUN, "--quant-mode", "fp16"], "unknown quant-mode 'fp16'; allowed: static, weights, dynamic"),
    ([RUN, "--sparsity", "1"], "sparsity must be in [0, 1), got 1.0"),
    (
        [RUN, "--sweep", "--sweep-quant", "fp32,int4"],
        "unknown sweep quant 'int4'; allowed: fp32, qdq, qoperator, dynamic",
    ),
    ([RUN, "--sweep", "--sweep-prune", "0,1.5"], "sweep prune ratio must be in [0, 1), got 1.5"),
    ([RUN, "--sweep-students", "tiny"], "need --sweep"),
    ([RUN, "--teacher-mode", "ensemble", "--kd-source", "public"], "teacher-mode ensemble needs"),
    ([RUN, "--teacher-mode", "ensemble"], "needs student rounds on the run's clients"),
    ([RUN, "--teacher-mode", "crowd"], "unknown teacher-mode 'crowd'"),
    (
        [RUN, "--student", "tiny"],
        "needs student rounds on the run's clients, which are gone (student changed)",
    ),
    ([RUN, "--run-config", "rounds=7"], "fedge compress cannot change rounds"),
    ([RUN, "--scenario", "rounds.toml"], "fedge compress cannot change rounds"),
    ([RUN, "--scenario", "unknown.toml"], "unknown setting 'distil-epochs'"),
    (
        # refused before any distillation: no candidate's int8 weights fit in 100 bytes
        [RUN, "--kd-source", "public", "--prune-ratio", "0.0", "--max-bytes", "100"],
        "max-bytes=100 is below",
    ),
]


@pytest.mark.parametrize(("args", "message"), COMPRESS_CASES)
def test_compress_refuses_bad_input_and_writes_nothing(cli, tmp_path, finished_run, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "rounds.toml").write_text("rounds = 7\n")
    (tmp_path / "unknown.toml").write_text("distil-epochs = 7\n")
    before = written(tmp_path)
    run_before = sorted(p.name for p in finished_run.iterdir())
    paths = {"run": finished_run, "empty": tmp_path / "empty", "missing": tmp_path / "nothing"}
    result = cli("compress", *(a.format(**paths) for a in args), "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output), result.output
    assert written(tmp_path) == before  # neither out nor out.partial
    assert sorted(p.name for p in finished_run.iterdir()) == run_before  # no RUN/compress


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([RUN, "--shadows", "3"], "--shadows must be >= 4"),
        ([RUN, "--workers", "0"], "--workers must be >= 1, got 0"),
        (["{empty}"], "cannot be audited: results.json is missing"),
    ],
)
def test_audit_refuses_bad_input_and_writes_nothing(cli, tmp_path, finished_run, args, message):
    (tmp_path / "empty").mkdir()
    run_before = sorted(p.name for p in finished_run.iterdir())
    paths = {"run": finished_run, "empty": tmp_path / "empty"}
    result = cli("audit", *(a.format(**paths) for a in args), "--out", tmp_path / "bad")
    assert result.exit_code == 2 and message in one_line(result.output), result.output
    assert written(tmp_path) == ["empty"]
    assert sorted(p.name for p in finished_run.iterdir()) == run_before


def test_a_sweep_that_meets_no_limit_still_writes_its_table_and_names_the_limit(
    cli, tmp_path, finished_run
):
    out = tmp_path / "out"
    result = cli(
        "compress", finished_run, "--sweep", "--sweep-students", "deep-tiny", "--sweep-prune",
        "0", "--sweep-quant", "fp32", "--max-accuracy-drop", "0", "--kd-source", "public",
        "--kd-epochs", "1", "--student-max-drop", "100", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    text = one_line(result.output)
    assert "no candidate is within max-accuracy-drop=0.0 points" in text
    assert "a larger --max-accuracy-drop" in text and f"the sweep's table and plots: {out}" in text
    assert {p.name for p in out.iterdir()} == {"sweep.csv", "sweep.json", "pareto.png"}
    assert "deep-tiny" in (out / "sweep.csv").read_text()


def _json(path, value):
    path.write_text(json.dumps(value))


def _results(run, change):
    results = json.loads((run / "results.json").read_text())
    _json(run / "results.json", change(results))


TAMPERED = [
    (lambda run: _json(run / "results.json", []), "a JSON object was expected, got list"),
    (
        lambda run: _results(run, lambda r: {**r, "config": []}),
        "a run config is a table of settings, got list",
    ),
    (
        lambda run: (run / "teacher.onnx").write_bytes((run / "teacher.onnx").read_bytes()[:200]),
        "teacher.onnx is not a model onnxruntime can load",
    ),
]


@pytest.mark.parametrize(("tamper", "message"), TAMPERED)
@pytest.mark.parametrize("command", ["compress", "audit"])
def test_a_tampered_run_is_refused_in_one_line_before_any_work(
    cli, tmp_path, finished_run, tamper, message, command
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    tamper(run)
    before = written(tmp_path)
    quick = ["--kd-source", "public"] if command == "compress" else []
    result = cli(command, run, *quick, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output), result.output
    assert written(tmp_path) == before


def test_compress_refuses_a_damaged_signing_key_in_one_line(cli, tmp_path, finished_run):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "keys" / "signing.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    result = cli("compress", run, "--kd-source", "public", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    text = one_line(result.output)
    assert "cannot read private key" in text and "signs with the run's key" in text, text
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("command", ["compress", "audit"])
@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("file", "already exists and is not an empty directory"),
        ("file/sub", "is under"),
    ],
)
def test_an_out_that_is_a_file_or_under_one_is_refused_before_any_work(
    cli, tmp_path, finished_run, command, out, message
):
    (tmp_path / "file").write_text("a user's file")
    result = cli(command, finished_run, "--out", tmp_path / out)
    assert result.exit_code == 2, result.output
    assert message in one_line(result.output) and "Traceback" not in result.output
    assert (tmp_path / "file").read_text() == "a user's file"
