"""`fedge simulate` and `fedge keys` in-process: files and run directories it refuses, untouched."""

import json

from tests.cli.conftest import one_line, written


def test_unknown_scenario_key_is_refused(cli, tmp_path):
    (tmp_path / "s.toml").write_text('dataset = "digits"\nroundz = 3\n')
    result = cli("simulate", "--scenario", "s.toml")
    assert result.exit_code == 2 and "unknown setting 'roundz'" in one_line(result.output)
    assert written(tmp_path) == ["s.toml"]


def test_a_corrupt_data_file_is_a_clear_error(cli, tmp_path):
    bad = tmp_path / "data.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    result = cli("simulate", "--dataset", f"npz:{bad}", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "data.npz" in one_line(result.output), result.output
    assert written(tmp_path) == ["data.npz"]


def test_resume_refuses_what_it_cannot_continue_and_touches_nothing(cli, tmp_path, finished_run):
    before = sorted(p.name for p in finished_run.iterdir())
    finished = cli("simulate", "--resume", finished_run)
    assert finished.exit_code == 2 and "already finished" in one_line(finished.output)
    (tmp_path / "junk").mkdir()
    junk = cli("simulate", "--resume", tmp_path / "junk")
    assert junk.exit_code == 2 and "is not an unfinished fedge run" in one_line(junk.output)
    partial = tmp_path / "half.partial"
    partial.mkdir()
    (partial / "run-config.json").write_text(json.dumps({"rounds": 3, "clients": 3}))
    changed = cli("simulate", "--resume", tmp_path / "half", "--rounds", "5")
    assert changed.exit_code == 2
    assert "different settings: rounds (run: 3, now: 5)" in one_line(changed.output)
    fresh = cli("simulate", "--out", tmp_path / "half")
    assert fresh.exit_code == 2 and "holds an unfinished run" in one_line(fresh.output)
    assert written(tmp_path) == ["half.partial", "half.partial/run-config.json", "junk"]
    assert sorted(p.name for p in finished_run.iterdir()) == before


def test_keys_generate_refuses_to_overwrite(cli, tmp_path):
    assert cli("keys", "generate", "--out", "k").exit_code == 0
    assert (tmp_path / "k" / "signing.key").stat().st_mode & 0o777 == 0o600
    key = (tmp_path / "k" / "signing.key").read_bytes()
    again = cli("keys", "generate", "--out", "k")
    assert again.exit_code == 2 and "refusing to overwrite" in one_line(again.output)
    assert (tmp_path / "k" / "signing.key").read_bytes() == key


def test_a_federation_that_cannot_go_on_is_one_line_and_exit_1(cli, tmp_path, monkeypatch):
    # every reply refused, or too few nodes: not a setting (exit 2) and not a crash (a
    # traceback): Flower's engine raises again what the ServerApp raised, and the CLI says it
    from fedge.server.nodes import FederationError
    from fedge.simulations import runner

    def engine(*args, **kwargs):
        raise FederationError("no round produced a model (round 1: 0 valid updates)")

    monkeypatch.setattr(runner, "run_engine", engine)
    result = cli("simulate", "--rounds", "1", "--out", tmp_path / "run")
    assert result.exit_code == 1, result.output
    text = one_line(result.output)
    assert "error: the federation could not go on: no round produced a model" in text, text
    assert "Traceback" not in result.output


def test_samples_too_small_for_the_teachers_pooling_are_refused_before_training(cli, tmp_path):
    # an npz of 1x1 images passes every array check; the cnn teacher's pooling cannot take it
    import numpy as np

    x = np.random.default_rng(0).normal(size=(60, 1, 1, 1)).astype(np.float32)
    y = np.arange(60) % 2
    np.savez(tmp_path / "d.npz", x_train=x[:50], y_train=y[:50], x_test=x[50:], y_test=y[50:])
    result = cli("simulate", "--dataset", "npz:d.npz", "--clients", "2", "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert "teacher cnn cannot take samples of shape (1, 1, 1)" in one_line(result.output)
    assert written(tmp_path) == ["d.npz"]


def test_an_out_under_a_file_is_refused_before_training(cli, tmp_path):
    (tmp_path / "file").write_text("a user's file")
    result = cli("simulate", "--out", tmp_path / "file" / "run")
    assert result.exit_code == 2, result.output
    assert f"is under {tmp_path / 'file'}, a file" in one_line(result.output)
    assert written(tmp_path) == ["file"]


def test_keys_generate_under_a_file_is_one_line(cli, tmp_path):
    (tmp_path / "file").write_text("a user's file")
    result = cli("keys", "generate", "--out", tmp_path / "file" / "keys")
    assert result.exit_code == 2, result.output
    assert "cannot write the key pair in" in one_line(result.output)
    assert written(tmp_path) == ["file"]
