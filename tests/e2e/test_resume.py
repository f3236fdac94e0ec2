"""SIGKILL a real `fedge simulate` at every stage of one run and resume: the same bytes at the end."""

import json

from fedge.simulations.crash import kill_when, start_simulate
from tests.e2e.processes import TINY, fedge


def test_sigkill_at_each_stage_then_resume_loses_no_round_and_ends_with_the_same_models(
    tmp_path, tiny_run, monkeypatch
):
    """One run killed after round 1, after compression, while deploying and before the rename.

    Each kill is resumed from where it stopped; the run ends with the uninterrupted run's
    teacher and student, byte for byte, every client installed, and nothing left over.
    """
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    out, partial = tmp_path / "run", tmp_path / "run.partial"
    log = tmp_path / "killed.log"
    points = [
        ("round 1 checkpoint", lambda: (partial / "checkpoints" / "round-0001.json").is_file()),
        ("bundle written", lambda: (partial / "compressed.json").is_file()),
        ("deploying", lambda: (partial / "nodes").is_dir()),
        ("results written, not renamed", lambda: (partial / "results.json").is_file()),
    ]
    args = ["--scenario", TINY, "--out", str(out)]
    killed = []
    for name, ready in points:
        proc = start_simulate(args, log)
        if kill_when(proc, ready, timeout=300):  # bounds a hang, not a speed
            killed.append(name)
            if len(killed) == 1:
                assert not out.exists()  # the final directory appears only at the end
        elif out.is_dir():
            break  # it finished before this point could be caught
        args = ["--resume", str(out)]
    assert killed[:2] == ["round 1 checkpoint", "bundle written"], log.read_text()[-3000:]
    if not out.is_dir():
        resumed = fedge("simulate", "--resume", str(out), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((tiny_run / "results.json").read_text())
    assert results["resumed_from"] and results["resumed_from"][0] >= 1
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert results["final_model_sha256"] == reference["final_model_sha256"]
    assert results["student"]["sha256"] == reference["student"]["sha256"]
    assert all(c["installed"] for c in results["clients"])
    assert not partial.exists() and not (out / "checkpoints").exists()
