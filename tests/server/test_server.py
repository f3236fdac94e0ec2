"""The server pipeline through an in-process Grid that runs the real ClientApp handlers."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fedge.client.app import app as client_app
from fedge.client.node import simulated_store
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key, read_bundle_dir, verify_bundle
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import build_federation
from fedge.core.records import model_spec
from fedge.pipeline.rundir.paths import staged_run_dir
from fedge.server.run import run_server
from fedge.server.training_loop import FederationError, train_teacher, wait_for_nodes
from tests.flower_local import LocalGrid

# Every default stage (student auto, federated distillation, static int8), kept short.
FAST = RunConfig(
    clients=4,
    rounds=2,
    partition="iid",
    local_epochs=1,
    kd_epochs=3,
    finetune_epochs=1,
    auto_students="deep-tiny,deep-small",
    student_rounds=2,
    student_epochs=1,
    qat_epochs=3,
    install_timing="once",  # one latency measurement per install, not the best of three
    student_max_drop=100.0,  # students of a few epochs: the pipeline, not their quality
)
# One student, public distillation only: for tests about something else.
QUICKER = FAST.replace(student="deep-tiny", kd_source="public")


def test_a_client_that_raises_is_reported_and_the_round_goes_on():
    grid = LocalGrid(client_app, num_nodes=4, failing_partitions=[1])
    fed = build_federation(FAST)
    teacher = build_teacher((1, 8, 8), 10, seed=0)
    log = train_teacher(
        grid, FAST, teacher, fed.server.test, model_spec(fed.dataset.preprocessing, 10)
    )
    assert [r["clients_ok"] for r in log.rounds] == [3, 3]
    failure = log.rounds[1]["clients_failed"][0]
    assert "simulated crash in train" in failure["reason"] and failure["node_id"] == 101
    assert log.rounds[-1]["accuracy"] > 0.5  # the others still trained the model


def test_waiting_for_too_few_nodes_ends_with_a_clear_message():
    grid = LocalGrid(client_app, num_nodes=2)
    with pytest.raises(FederationError, match="only 2 of clients=4 nodes connected"):
        wait_for_nodes(grid, 4, timeout=0.5)


@pytest.mark.slow
def test_run_server_writes_results_and_every_node_installs(tmp_path):
    grid = LocalGrid(client_app, num_nodes=4)
    with staged_run_dir(tmp_path / "run") as work:
        results = run_server(grid, FAST, work)
    run = tmp_path / "run"
    assert not (tmp_path / "run.partial").exists()
    on_disk = json.loads((run / "results.json").read_text())
    assert results.student is not None and on_disk["student"]["sha256"] == results.student.sha256
    assert [c["installed"] for c in on_disk["clients"]] == [True] * 4
    assert [c["partition_id"] for c in on_disk["clients"]] == [0, 1, 2, 3]
    assert (
        on_disk["communication"]["train_bytes"] > 0 and on_disk["communication"]["deploy_bytes"] > 0
    )
    key = load_public_key(run / "keys" / "signing.pub")
    bundle = verify_bundle(read_bundle_dir(run / "bundle"), key)
    for pid in range(4):
        assert (
            ModelStore(simulated_store(run / "nodes", pid)).load(key).model_bytes
            == bundle.model_bytes
        )
    # Federated distillation: the student trained on every client, in rounds of its own.
    rounds = on_disk["student_rounds"]["rounds"]
    assert [r["clients_ok"] for r in rounds] == [4, 4] and on_disk["communication"][
        "student_train_bytes"
    ] > 0
    # student auto: candidates smallest first, until one is within auto-max-drop of the teacher
    choice = on_disk["choice"]
    tried = [c["student"] for c in choice["candidates"]]
    assert tried in (["deep-tiny"], ["deep-tiny", "deep-small"])
    assert all(c["drop_pt"] > 0.5 for c in choice["candidates"][:-1])
    assert on_disk["student"]["architecture"] == choice["chosen"]["student"]
    student_msgs = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN_STUDENT]
    assert len(student_msgs) == 4 * 2 * len(tried)  # 4 nodes x 2 rounds per candidate
    assert all(set(msg.content) == {m.ARRAYS, m.CONFIG, m.FEDERATE} for msg in student_msgs)
    assert len(list((run / "federated").glob("*.npz"))) == len(tried)  # kept for replays
    assert (run / "report.md").read_text().startswith("# fedge run")
    assert (run / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # Every round's numbers as TensorBoard curves, the same as results.json's
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    curve = events.Scalars("teacher/accuracy")
    assert [e.step for e in curve] == [r["round"] for r in on_disk["rounds"]]
    assert [e.value for e in curve] == pytest.approx([r["accuracy"] for r in on_disk["rounds"]])
    student_tags = [t for t in events.Tags()["scalars"] if t.startswith("student-")]
    assert f"student-{tried[0]}/accuracy" in student_tags


def test_a_failed_run_leaves_no_directory(tmp_path):
    grid = LocalGrid(client_app, num_nodes=2)  # fewer nodes than clients=4
    with pytest.raises(FederationError), staged_run_dir(tmp_path / "run") as work:
        run_server(grid, QUICKER.replace(round_timeout=0.5), work)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


@pytest.mark.slow
def test_a_node_whose_install_crashes_is_reported_not_installed(tmp_path):
    grid = LocalGrid(
        client_app, num_nodes=4, failing_partitions=[2], failing_types=["query.deploy"]
    )
    with staged_run_dir(tmp_path / "run") as work:
        results = run_server(grid, QUICKER, work)
    rows = {c.partition_id: c for c in results.clients}
    assert [rows[p].installed for p in range(4)] == [True, True, False, True]
    assert "simulated crash in query.deploy" in rows[2].reason
    # every reachable client must install by default: the run is not a success, and says why
    deployment = results.deployment
    assert deployment is not None and not deployment.passed
    assert deployment.reason == "3 of 4 reachable clients installed the bundle; min-installed 4"
    assert "**Deployment FAILED**: 3 of 4" in (tmp_path / "run" / "report.md").read_text()
    from fedge.pipeline.outputs.results import deployment as verdict

    assert verdict(QUICKER.replace(min_installed=3), list(results.clients)).passed


@pytest.mark.slow
def test_a_tabular_run_carries_per_feature_statistics_to_every_node(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    x = (rng.normal(size=(600, 5)) + 2 * y[:, None]) * np.array([1e-3, 1, 1e3, 1, 1e5])
    path = tmp_path / "tab.npz"
    np.savez(path, x_train=x[:500], y_train=y[:500], x_test=x[500:], y_test=y[500:])
    cfg = QUICKER.replace(dataset=f"npz:{path}", clients=3, rounds=3, local_epochs=3, kd_epochs=100)
    grid = LocalGrid(client_app, num_nodes=3)
    with staged_run_dir(tmp_path / "run") as work:
        results = run_server(grid, cfg, work)
    manifest = json.loads((tmp_path / "run" / "bundle" / "manifest.json").read_text())
    assert len(manifest["preprocessing"]["scale"]) == 5  # one per feature, in the graph
    assert manifest["preprocessing"]["scale"][4] < 1e-3 < manifest["preprocessing"]["scale"][0]
    assert results.student is not None
    assert results.teacher.accuracy > 0.8 and results.student.accuracy > 0.8
    # every node ran the shipped model on its raw (unstandardized) samples and got it right
    assert all(c.installed and (c.accuracy or 0) > 0.7 for c in results.clients)
