"""End to end: `fedge compress` on a finished tiny run: replay, new students, sweep, choice."""

import csv
import json
import subprocess

import numpy as np

from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key, read_bundle_dir
from fedge.core.choices import STUDENTS
from fedge.core.ort import make_session, weight_only
from tests.e2e.processes import fedge, one_line


def test_compress_reuses_the_teacher_and_writes_a_bundle_devices_accept(tmp_path, tiny_run):
    from fedge.client.runtime.predictor import Predictor

    # The run's own settings again: the same student, byte for byte (federated rounds replayed
    # from what the run's clients trained).
    again = tmp_path / "again"
    proc = fedge("compress", str(tiny_run), "--out", str(again), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shipped = json.loads((tiny_run / "results.json").read_text())["student"]["sha256"]
    assert json.loads((again / "results.json").read_text())["student"]["sha256"] == shipped
    # Another student needs new federated rounds, whose clients are gone: refused (in-process
    # in tests/cli/) unless it learns from the public pool only. Weight-only int8 this time
    # (a tiny student on digits sits near ties: its rounded weights move 1-3 % of the answers).
    out = tmp_path / "c"
    args = ["--student", "tiny", "--kd-source", "public", "--kd-epochs", "30"]
    args += ["--finetune-epochs", "2", "--quant-mode", "weights", "--int8-tolerance", "0.05"]
    proc = fedge("compress", str(tiny_run), *args, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    source = json.loads((tiny_run / "results.json").read_text())
    assert results["teacher"]["accuracy"] == source["teacher"]["accuracy"]  # same teacher
    assert results["compression_config"]["distill"]["student"] == "tiny"
    assert results["student"]["architecture"] == "tiny"
    assert results["student"]["onnx_bytes"] * 50 < source["teacher"]["onnx_bytes"]
    assert results["student"]["quantized"] and weight_only(
        (out / "bundle" / "model.onnx").read_bytes()
    )
    key_path = tiny_run / "keys" / "signing.pub"
    store = ModelStore(tmp_path / "store")
    store.install(read_bundle_dir(out / "bundle"), load_public_key(key_path))
    predictor = Predictor(tmp_path / "store", key_path, warmup=0)
    assert predictor.version == results["student"]["version"] > source["student"]["version"]
    x = np.random.default_rng(0).random((8, *predictor.sample_shape), dtype=np.float32) * 16
    server = make_session((out / "bundle" / "model.onnx").read_bytes()).run(None, {"input": x})[1]
    np.testing.assert_array_equal(predictor.predict(x).probabilities, server)  # folded there too
    assert "fedge compress of run" in (out / "report.md").read_text()


def test_compress_refuses_bad_input_and_writes_nothing(tmp_path, tiny_run):
    """One smoke case on the real run; every case runs in-process in tests/cli/."""
    proc = fedge(
        "compress", str(tiny_run), "--teacher-mode", "ensemble", "--out", str(tmp_path / "out"),
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "needs student rounds on the run's clients" in one_line(proc.stderr), proc.stderr
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
        quick = ["--kd-source", "public", "--kd-epochs", "3", "--finetune-epochs", "0"]
        quick += ["--prune-ratio", "0.0"]
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
    assert tight.returncode == 2 and "no candidate fits max-bytes" in one_line(tight.stderr)
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
    lenient = compress("c", "--max-accuracy-drop", "100")
    assert lenient.returncode == 0, lenient.stderr[-3000:]
    choice = json.loads((tmp_path / "c" / "results.json").read_text())["choice"]
    assert choice["chosen"]["student"] == STUDENTS[0] and len(choice["candidates"]) == 1  # stops
    # A budget no candidate can meet is refused before any distillation: in tests/cli/.
