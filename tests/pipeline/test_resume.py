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
from fedge.pipeline.ship import phase
from fedge.server import run as server_run
from fedge.server.run import run_server
from fedge.simulations.runner import build_config
from tests.flower_local import LocalGrid

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
)


def _partial(tmp_path, cfg: RunConfig, completed: int):
    partial = tmp_path / "run.partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / RUN_CONFIG_FILE).write_text(json.dumps(cfg.to_run_config()))
    log = {
        "rounds": [{"round": i} for i in range(1, completed + 1)],
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


def _kill_deploy(monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed during deployment")

    monkeypatch.setattr(server_run, "deploy_bundle", killed)


def _killed_during_deployment(tmp_path, monkeypatch) -> dict:
    """Run until deployment, where the server 'dies'; the shipped student's figures."""
    monkeypatch.setenv("FEDGE_SIMULATION", "1")
    final = tmp_path / "run"
    original = server_run.deploy_bundle
    _kill_deploy(monkeypatch)
    with pytest.raises(KeyboardInterrupt), staged_run_dir(final) as work:
        run_server(LocalGrid(client_app, num_nodes=3), CFG.replace(out=str(final)), work)
    monkeypatch.setattr(server_run, "deploy_bundle", original)
    return json.loads((tmp_path / "run.partial" / COMPRESSED_FILE).read_text())["student"]


def test_a_run_killed_during_deployment_resumes_with_the_same_bundle(tmp_path, monkeypatch):
    first = _killed_during_deployment(tmp_path, monkeypatch)
    final = tmp_path / "run"
    monkeypatch.setattr(
        server_run, "compress_and_ship", lambda *a, **k: pytest.fail("recompressed")
    )
    resumed_cfg = CFG.replace(out=str(final), resume=True)
    with staged_run_dir(final, resume=True) as work:
        results = run_server(LocalGrid(client_app, num_nodes=3), resumed_cfg, work)
    assert results["student"]["version"] == first["version"]  # the same bundle, not a new one
    assert results["student"]["sha256"] == first["sha256"]
    assert all(c["installed"] for c in results["clients"])


def test_a_bundle_without_its_record_is_made_again_with_the_same_bytes(tmp_path, monkeypatch):
    first = _killed_during_deployment(tmp_path, monkeypatch)
    final, partial = tmp_path / "run", tmp_path / "run.partial"
    (partial / COMPRESSED_FILE).unlink()  # killed between writing the bundle and its record
    assert phase.load_shipped(partial) is None and not (partial / "bundle").exists()
    with staged_run_dir(final, resume=True) as work:
        results = run_server(
            LocalGrid(client_app, num_nodes=3), CFG.replace(out=str(final), resume=True), work
        )
    assert results["student"]["sha256"] == first["sha256"]  # reproducible compression
