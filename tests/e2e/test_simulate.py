"""End to end: `fedge simulate` on Flower's real simulation engine, through redistribution."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedge.client.node import simulated_store
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key, read_bundle_dir, verify_bundle
from fedge.core.choices import STUDENTS
from fedge.core.ort import make_session

ROOT = Path(__file__).resolve().parents[2]


def fedge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # HOME inside the test's directory: the default run directory (~/fedge-runs) lands there.
    env = {**os.environ, "FLWR_HOME": str(cwd / "flwr-home"), "HOME": str(cwd / "home")}
    return subprocess.run(
        [sys.executable, "-m", "fedge", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


TINY = str(ROOT / "simulations" / "tiny.toml")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One uninterrupted tiny run, shared by the tests of this module."""
    tmp = tmp_path_factory.mktemp("tiny")
    proc = fedge("simulate", "--scenario", TINY, "--out", str(tmp / "run"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"


def test_tiny_simulation_trains_compresses_and_every_client_installs(tiny_run):
    out = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert all(0 <= r["accuracy"] <= 1 for r in results["rounds"])
    assert results["teacher"]["accuracy"] > 0.7  # chance is 0.1
    assert results["student"]["onnx_bytes"] * 10 < results["teacher"]["onnx_bytes"]
    names = [s["name"] for s in results["stages"]]
    assert names[:4] == ["distilled", "pruned", "federated", "onnx-fp32"]
    assert len(results["clients"]) == 3 and all(c["installed"] for c in results["clients"])
    assert {"train_bytes", "deploy_bytes"} <= results["communication"].keys()
    assert {"total", "training", "compression", "deploy"} <= results["timing_s"].keys()
    key = load_public_key(out / "keys" / "signing.pub")
    bundle = verify_bundle(read_bundle_dir(out / "bundle"), key)
    make_session(bundle.model_bytes)
    for pid in range(3):
        assert ModelStore(simulated_store(out / "nodes", pid)).load(key).version == bundle.version
    assert "deployed student" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (
            ["--partition", "zipf"],
            "unknown partition 'zipf'; allowed: iid, dirichlet, pathological",
        ),
        (["--strategy", "sgd"], "unknown strategy 'sgd'"),
        (["--alpha", "0"], "alpha must be > 0"),
        (["--rounds", "0"], "rounds must be >= 1"),
        (["--clients", "5000", "--partition", "iid"], "clients=5000 is too many"),
        (["--scenario", "nope.toml"], "scenario file not found"),
        (["--dataset", "npz:missing.npz"], "npz file not found"),
        (["--dp", "central", "--dp-epsilon", "1e-7"], "dp-epsilon=1e-07 at delta=1e-05 cannot"),
        (["--dp", "local", "--dp-epsilon", "1e-7"], "dp-epsilon=1e-07 at delta=1e-05 cannot"),
        (["--dp", "central", "--aggregation", "krum"], "dp central needs the plain mean"),
        (["--dp", "everything"], "unknown dp 'everything'; allowed: none, central, local"),
        (["--teacher-mode", "crowd"], "unknown teacher-mode 'crowd'"),
    ],
)
def test_bad_input_exits_2_before_training_and_writes_nothing(tmp_path, args, message):
    proc = fedge("simulate", *args, cwd=tmp_path)  # no --out: the default directory is checked
    assert proc.returncode == 2
    assert message in " ".join(proc.stderr.split())
    assert not (tmp_path / "home" / "fedge-runs").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"home"}  # libraries may cache under HOME


def test_unknown_scenario_key_is_refused(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('dataset = "digits"\nroundz = 3\n')
    proc = fedge("simulate", "--scenario", str(scenario), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown setting 'roundz'" in proc.stderr


def test_keys_generate_refuses_to_overwrite(tmp_path):
    assert fedge("keys", "generate", "--out", "k", cwd=tmp_path).returncode == 0
    assert (tmp_path / "k" / "signing.key").stat().st_mode & 0o777 == 0o600
    again = fedge("keys", "generate", "--out", "k", cwd=tmp_path)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_sigkill_then_resume_loses_no_round_and_ends_with_the_same_model(
    tmp_path, tiny_run, monkeypatch
):
    from fedge.simulations.crash import kill_when, start_simulate

    out = tmp_path / "run"
    checkpoint = tmp_path / "run.partial" / "checkpoints" / "round-0001.json"
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    proc = start_simulate(["--scenario", TINY, "--out", str(out)], tmp_path / "killed.log")
    assert kill_when(proc, checkpoint.is_file, timeout=300), (tmp_path / "killed.log").read_text()
    assert not out.exists()
    resumed = fedge("simulate", "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((tiny_run / "results.json").read_text())
    assert results["resumed_from"] and results["resumed_from"][0] >= 1
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert results["final_model_sha256"] == reference["final_model_sha256"]
    assert not (tmp_path / "run.partial").exists() and not (out / "checkpoints").exists()


def test_kills_after_compression_during_deployment_and_before_the_rename_all_resume(
    tmp_path, tiny_run, monkeypatch
):
    """SIGKILL at each later point of one run, resume each time: the same teacher and student."""
    from fedge.simulations.crash import kill_when, start_simulate

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    out, partial = tmp_path / "run", tmp_path / "run.partial"
    points = [
        ("bundle written", lambda: (partial / "compressed.json").is_file()),
        ("deploying", lambda: (partial / "nodes").is_dir()),
        ("results written, not renamed", lambda: (partial / "results.json").is_file()),
    ]
    args = ["--scenario", TINY, "--out", str(out)]
    killed = []
    for name, ready in points:
        proc = start_simulate(args, tmp_path / "killed.log")
        if kill_when(proc, ready, timeout=300):
            killed.append(name)
        elif out.is_dir():
            break  # it finished before this point could be caught
        args = ["--resume", str(out)]
    assert killed[:1] == ["bundle written"], (tmp_path / "killed.log").read_text()[-3000:]
    if not out.is_dir():
        resumed = fedge("simulate", "--resume", str(out), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((tiny_run / "results.json").read_text())
    assert results["final_model_sha256"] == reference["final_model_sha256"]
    assert results["student"]["sha256"] == reference["student"]["sha256"]
    assert all(c["installed"] for c in results["clients"])
    assert not partial.exists() and not (out / "checkpoints").exists()


def test_resume_refuses_what_it_cannot_continue_and_touches_nothing(tmp_path, tiny_run):
    before = sorted(p.name for p in tiny_run.iterdir())
    finished = fedge("simulate", "--resume", str(tiny_run), cwd=tmp_path)
    assert finished.returncode == 2 and "already finished" in finished.stderr
    (tmp_path / "junk").mkdir()
    junk = fedge("simulate", "--resume", str(tmp_path / "junk"), cwd=tmp_path)
    assert junk.returncode == 2 and "is not an unfinished fedge run" in " ".join(
        junk.stderr.split()
    )
    partial = tmp_path / "half.partial"
    partial.mkdir()
    (partial / "run-config.json").write_text(json.dumps({"rounds": 3, "clients": 3}))
    changed = fedge("simulate", "--resume", str(tmp_path / "half"), "--rounds", "5", cwd=tmp_path)
    assert changed.returncode == 2
    assert "different settings: rounds (run: 3, now: 5)" in " ".join(changed.stderr.split())
    fresh = fedge("simulate", "--out", str(tmp_path / "half"), cwd=tmp_path)
    assert fresh.returncode == 2 and "holds an unfinished run" in " ".join(fresh.stderr.split())
    assert sorted(p.name for p in partial.iterdir()) == ["run-config.json"]
    assert sorted(p.name for p in tiny_run.iterdir()) == before


def test_a_corrupt_data_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "data.npz"
    bad.write_bytes(b"PK\x03\x04 this is not a zip archive")
    proc = fedge(
        "simulate", "--dataset", f"npz:{bad}", "--out", str(tmp_path / "run"), cwd=tmp_path
    )
    assert proc.returncode == 2 and "data.npz" in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_compress_reuses_the_teacher_and_writes_a_bundle_devices_accept(tmp_path, tiny_run):
    from fedge.client.runtime.predictor import Predictor

    # The run's own settings again: the same student, byte for byte (federated rounds replayed
    # from what the run's clients trained).
    again = tmp_path / "again"
    proc = fedge("compress", str(tiny_run), "--out", str(again), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shipped = json.loads((tiny_run / "results.json").read_text())["student"]["sha256"]
    assert json.loads((again / "results.json").read_text())["student"]["sha256"] == shipped
    # Another student needs new federated rounds, whose clients are gone: refused ...
    refused = fedge(
        "compress", str(tiny_run), "--student", "tiny", "--out", str(tmp_path / "x"), cwd=tmp_path
    )
    assert refused.returncode == 2
    assert (
        "needs student rounds on the run's clients, which are gone (student changed)"
        in " ".join(refused.stderr.split())
    )
    assert not (tmp_path / "x").exists()
    # ... unless it learns from the public pool only.
    out = tmp_path / "c"
    args = [
        "--student",
        "tiny",
        "--kd-source",
        "public",
        "--kd-epochs",
        "30",
        "--finetune-epochs",
        "2",
    ]
    proc = fedge("compress", str(tiny_run), *args, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    source = json.loads((tiny_run / "results.json").read_text())
    assert results["teacher"]["accuracy"] == source["teacher"]["accuracy"]  # same teacher
    assert results["compression_config"]["distill"]["student"] == "tiny"
    assert results["student"]["architecture"] == "tiny"
    assert results["student"]["onnx_bytes"] * 50 < source["teacher"]["onnx_bytes"]
    key_path = tiny_run / "keys" / "signing.pub"
    store = ModelStore(tmp_path / "store")
    store.install(read_bundle_dir(out / "bundle"), load_public_key(key_path))
    predictor = Predictor(tmp_path / "store", key_path, warmup=0)
    assert predictor.version == results["student"]["version"] > source["student"]["version"]
    assert "fedge compress of run" in (out / "report.md").read_text()


def test_compress_refuses_bad_input_and_writes_nothing(tmp_path, tiny_run):
    (tmp_path / "empty").mkdir()
    cases = [
        (
            [str(tmp_path / "empty")],
            "is not a finished fedge run with a teacher: results.json is missing",
        ),
        ([str(tiny_run), "--prune-ratio", "1.5"], "prune-ratio must be in [0, 1), got 1.5"),
        (
            [str(tiny_run), "--quant-mode", "fp16"],
            "unknown quant-mode 'fp16'; allowed: static, dynamic",
        ),
        ([str(tiny_run), "--sparsity", "1"], "sparsity must be in [0, 1), got 1.0"),
        (
            [str(tiny_run), "--sweep", "--sweep-quant", "fp32,int4"],
            "unknown sweep quant 'int4'; allowed: fp32, qdq, qoperator, dynamic",
        ),
        (
            [str(tiny_run), "--sweep", "--sweep-prune", "0,1.5"],
            "sweep prune ratio must be in [0, 1), got 1.5",
        ),
        ([str(tiny_run), "--sweep-students", "tiny"], "need --sweep"),
        (
            [str(tiny_run), "--teacher-mode", "ensemble", "--kd-source", "public"],
            "teacher-mode ensemble needs",
        ),
        (
            [str(tiny_run), "--teacher-mode", "ensemble"],
            "needs student rounds on the run's clients",
        ),
        ([str(tiny_run), "--teacher-mode", "crowd"], "unknown teacher-mode 'crowd'"),
    ]
    scenario = tmp_path / "s.toml"
    scenario.write_text("rounds = 7\n")
    cases.append(
        ([str(tiny_run), "--scenario", str(scenario)], "fedge compress cannot change rounds")
    )
    unknown = tmp_path / "u.toml"
    unknown.write_text("distil-epochs = 7\n")
    cases.append(([str(tiny_run), "--scenario", str(unknown)], "unknown setting 'distil-epochs'"))
    for args, message in cases:
        proc = fedge("compress", *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
        assert proc.returncode == 2 and message in " ".join(proc.stderr.split()), proc.stderr
        assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not (tiny_run / "compress").exists()


def test_sweep_writes_the_grid_and_ships_the_point_its_limit_picks(tmp_path, tiny_run):
    grid = ["--sweep-students", "tiny,small-fast", "--sweep-prune", "0,0.3"]
    grid += ["--sweep-quant", "fp32,qoperator"]
    quick = ["--kd-source", "public", "--kd-epochs", "3", "--finetune-epochs", "0"]
    out = tmp_path / "s"
    proc = fedge(
        "compress", str(tiny_run), "--sweep", *grid, *quick, "--max-bytes", "12000",
        "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["student"], r["prune_ratio"], r["quant"]) for r in rows} == {
        (s, p, q)
        for s in ("tiny", "small-fast")
        for p in ("0.0", "0.3")
        for q in ("fp32", "qoperator")
    }
    fits = [r for r in rows if int(r["bytes"]) <= 12000]
    best = max(float(r["val_accuracy"]) for r in fits)
    (chosen,) = [r for r in rows if r["chosen"] == "True"]
    assert int(chosen["bytes"]) <= 12000 and float(chosen["val_accuracy"]) == best
    assert chosen["pareto_bytes"] == "True"  # the most accurate point that fits is on the front
    results = json.loads((out / "results.json").read_text())
    assert results["student"]["onnx_bytes"] == int(chosen["bytes"])
    assert results["compression_config"]["distill"]["student"] == chosen["student"]
    assert results["compression_config"]["prune"]["ratio"] == float(chosen["prune_ratio"])
    assert (out / "pareto.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((out / "sweep.json").read_text())["max_bytes"] == 12000
    key_path = tiny_run / "keys" / "signing.pub"
    ModelStore(tmp_path / "store").install(
        read_bundle_dir(out / "bundle"), load_public_key(key_path)
    )


def test_compress_chooses_a_student_that_meets_its_limit(tmp_path, tiny_run):
    def compress(out: str, *limit: str) -> subprocess.CompletedProcess:
        quick = [
            "--kd-source",
            "public",
            "--kd-epochs",
            "3",
            "--finetune-epochs",
            "0",
            "--prune-ratio",
            "0.0",
        ]
        return fedge(
            "compress", str(tiny_run), *quick, *limit, "--out", str(tmp_path / out), cwd=tmp_path
        )

    roomy = compress("a", "--max-bytes", "30000")
    assert roomy.returncode == 0, roomy.stderr[-3000:]
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    candidates = {c["student"]: c for c in results["choice"]["candidates"]}
    assert set(candidates) == set(STUDENTS)
    fits = [c for c in candidates.values() if c["bytes"] <= 30000]
    best = max(fits, key=lambda c: c["val_accuracy"])
    chosen = results["choice"]["chosen"]["student"]
    assert chosen == best["student"] == results["compression_config"]["distill"]["student"]
    assert results["student"]["onnx_bytes"] <= 30000
    smallest = min(c["bytes"] for c in candidates.values())
    tight = compress("b", "--max-bytes", str(smallest - 1))
    assert tight.returncode == 2 and "no candidate fits max-bytes" in " ".join(tight.stderr.split())
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    lenient = compress("c", "--max-accuracy-drop", "100")
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    choice = json.loads((tmp_path / "c" / "results.json").read_text())["choice"]
    assert choice["chosen"]["student"] == STUDENTS[0] and len(choice["candidates"]) == 1  # stops
    # A budget no candidate can meet is refused before any distillation, nothing left behind.
    hopeless = compress("d", "--max-bytes", "100")
    assert hopeless.returncode == 2
    assert "max-bytes=100 is below" in " ".join(hopeless.stderr.split())
    assert not (tmp_path / "d").exists() and not (tmp_path / "d.partial").exists()


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


def test_audit_scores_every_model_and_refuses_bad_input(tmp_path, tiny_run):
    out = tmp_path / "a"
    proc = fedge("audit", str(tiny_run), "--shadows", "4", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads((out / "audit.json").read_text())
    assert set(audit["models"]) == {"teacher", "distilled", "pruned", "federated", "student"}
    # The audit's replay of the run's compression rebuilt the shipped student byte for byte.
    assert audit["replayed_student_sha256"] == audit["shipped_student_sha256"]
    for row in audit["models"].values():
        assert 0 <= row["tpr_at_1pct_fpr"] <= 1 and 0 <= row["auc"] <= 1
        assert row["ci95"]["auc"][0] <= row["auc"] <= row["ci95"]["auc"][1]
    source = json.loads((tiny_run / "results.json").read_text())
    assert audit["models"]["student"]["accuracy"] == pytest.approx(source["student"]["accuracy"])
    assert audit["shadows"] == 4 and (out / "roc.png").read_bytes().startswith(b"\x89PNG")
    report = (tiny_run / "report.md").read_text()
    assert report.count("## Membership-inference audit") == 1 and "x the teacher's" in report
    (tmp_path / "empty").mkdir()
    for args, message in (
        ([str(tiny_run), "--shadows", "3"], "--shadows must be >= 4"),
        ([str(tmp_path / "empty")], "cannot be audited: results.json is missing"),
    ):
        proc = fedge("audit", *args, "--out", str(tmp_path / "bad"), cwd=tmp_path)
        assert proc.returncode == 2 and message in " ".join(proc.stderr.split()), proc.stderr
        assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
