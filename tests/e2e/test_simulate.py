"""End to end: `fedge simulate` on Flower's real simulation engine, through redistribution."""

import json

from fedge.client.node import simulated_store
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key, read_bundle_dir, verify_bundle
from fedge.core.ort import make_session
from tests.e2e.processes import fedge, one_line


def test_tiny_simulation_trains_compresses_and_every_client_installs(tiny_run):
    out = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert all(0 <= r["accuracy"] <= 1 for r in results["rounds"])
    assert results["teacher"]["accuracy"] > 0.7  # chance is 0.1
    assert results["student"]["onnx_bytes"] * 10 < results["teacher"]["onnx_bytes"]
    names = [s["name"] for s in results["stages"]]
    rounds = results["student_rounds"]
    assert len(rounds["rounds"]) == 2 and rounds["train_bytes"] > 0  # the student rounds ran
    federated = ["federated"] if rounds["kept"] else []  # discarded when validation fell
    assert names[: 3 + len(federated)] == ["distilled", "pruned", *federated, "onnx-fp32"]
    assert rounds["kept"] == (rounds["validation_after"] >= rounds["validation_before"])
    assert len(results["clients"]) == 3 and all(c["installed"] for c in results["clients"])
    assert {"train_bytes", "deploy_bytes"} <= results["communication"].keys()
    assert {"total", "training", "compression", "deploy"} <= results["timing_s"].keys()
    key = load_public_key(out / "keys" / "signing.pub")
    bundle = verify_bundle(read_bundle_dir(out / "bundle"), key)
    make_session(bundle.model_bytes)
    for pid in range(3):
        assert ModelStore(simulated_store(out / "nodes", pid)).load(key).version == bundle.version
    assert "deployed student" in (out / "report.md").read_text()


def test_bad_input_exits_2_before_training_and_writes_nothing(tmp_path):
    """One smoke case through a real process; every case runs in-process in tests/cli/."""
    proc = fedge("simulate", "--dataset", "cifar", cwd=tmp_path)  # no --out: the default dir
    assert proc.returncode == 2
    assert "unknown dataset 'cifar'" in one_line(proc.stderr)
    assert not (tmp_path / "home" / "fedge-runs").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"home"}  # libraries may cache under HOME


def test_shadow_replay_reproduces_the_federated_teacher(tiny_run):
    """Differential: the audit's Flower-free FedAvg replay vs the real simulation's teacher."""
    from fedge.compression.onnx_teacher import OnnxTeacher
    from fedge.core.config import RunConfig
    from fedge.core.partition import build_federation, client_data
    from fedge.core.training import predict_logits
    from fedge.pipeline.audit.replay import replay_training

    cfg = RunConfig.from_run_config(json.loads((tiny_run / "results.json").read_text())["config"])
    fed = build_federation(cfg)
    sets = [(client_data(fed, p, cfg).train.x, client_data(fed, p, cfg).train.y) for p in range(3)]
    replayed = predict_logits(replay_training(cfg, sets, cfg.seed), fed.server.test.x)
    real = predict_logits(OnnxTeacher((tiny_run / "teacher.onnx").read_bytes()), fed.server.test.x)
    assert abs(replayed - real).max() < 1e-3
