"""Resume cannot be fooled: edited settings are refused, and a run killed after it compressed
continues with the same bundle (same version), or makes the same student again."""

import json

import numpy as np
import pytest

from fedge.client.app import app as client_app
from fedge.core.config import ConfigError, RunConfig
from fedge.pipeline.rundir.checkpoint import (
    Checkpoint,
    CheckpointDir,
    capture_rng,
    resume_fingerprint,
)
from fedge.pipeline.rundir.paths import COMPRESSED_FILE, RUN_CONFIG_FILE, staged_run_dir
from fedge.server.run import run_server
from fedge.simulations.runner import build_config
from tests.flower_local import LocalGrid
from tests.pipeline.rows import round_row

CFG = RunConfig(
    clients=3,
    rounds=2,
    partition="iid",
    local_epochs=1,
    student="deep-tiny",
    kd_epochs=5,
    student_rounds=1,
    student_epochs=1,
    qat_epochs=2,
    student_max_drop=100.0,  # a student of 5 epochs: resume's mechanics, not its quality
)


def _partial(tmp_path, cfg: RunConfig, completed: int):
    partial = tmp_path / "run.partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / RUN_CONFIG_FILE).write_text(json.dumps(cfg.to_run_config()))
    log = {
        "rounds": [round_row(i) for i in range(1, completed + 1)],
        "rejected": [],
        "train_bytes": 0,
    }
    CheckpointDir(partial / "checkpoints").save(
        Checkpoint(
            completed,
            {"w": np.zeros(2)},
            {},
            log,
            capture_rng(),
            resume_fingerprint(cfg),
        )
    )
    return partial


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"seed": 1}, "seed (checkpoints: 0, run-config.json: 1)"),
        ({"rounds": 1}, "rounds (checkpoints: 2, run-config.json: 1)"),
        ({"lr": 0.5}, "lr (checkpoints: 0.05, run-config.json: 0.5)"),
    ],
)
def test_an_edited_run_config_is_refused_naming_the_keys(tmp_path, edit, message):
    partial = _partial(tmp_path, CFG, completed=2)
    edited = {**CFG.to_run_config(), **edit}
    (partial / RUN_CONFIG_FILE).write_text(json.dumps(edited))
    with pytest.raises(ConfigError) as err:
        build_config({}, resume=tmp_path / "run")
    assert "the checkpoints were made with other settings" in str(err.value)
    assert message in str(err.value)


def test_a_resume_may_change_only_what_is_resumable(tmp_path):
    _partial(tmp_path, CFG, completed=1)
    cfg = build_config({"round-timeout": 5.0}, resume=tmp_path / "run")
    assert cfg.round_timeout == 5.0 and cfg.resume


@pytest.fixture()
def simulated(monkeypatch):
    """Simulated nodes: they trust the key the server sends with the bundle."""
    monkeypatch.setenv("FEDGE_SIMULATION", "1")


def _killed_during_deployment(tmp_path) -> dict:
    """Run until deployment, where the server 'dies'; the shipped student's figures."""
    final = tmp_path / "run"
    grid = LocalGrid(client_app, num_nodes=3, die_at="query.deploy")
    with pytest.raises(KeyboardInterrupt), staged_run_dir(final) as work:
        run_server(grid, CFG.replace(out=str(final)), work)
    return json.loads((tmp_path / "run.partial" / COMPRESSED_FILE).read_text())["student"]


@pytest.mark.slow
def test_a_run_killed_during_deployment_resumes_with_the_same_bundle(tmp_path, simulated):
    first = _killed_during_deployment(tmp_path)
    final = tmp_path / "run"
    grid = LocalGrid(client_app, num_nodes=3)
    with staged_run_dir(final, resume=True) as work:
        results = run_server(grid, CFG.replace(out=str(final), resume=True), work)
    assert results.student is not None  # the same bundle (a new one has a new version):
    assert results.student.version == first["version"] and results.student.sha256 == first["sha256"]
    assert all(c.installed for c in results.clients)
    assert not [msg for msg in grid.sent if msg.metadata.message_type == "train.student"]
