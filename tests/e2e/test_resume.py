"""SIGKILL a real `fedge simulate` at every stage of one run and resume: the same bytes at the end."""

import json
import signal
import time
from pathlib import Path

import pytest

from fedge.simulations.crash import kill_tree, kill_when, start_simulate
from fedge.simulations.interrupt import descendants
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


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_round_3_stops_the_run_at_once_and_it_resumes_to_the_same_bytes(
    tmp_path, tiny_run, monkeypatch, signum
):
    """Ctrl-C (or SIGTERM) while round 3 trains: exit 128+signal within 10 s, one line that
    says how to resume, no Ray process left; --resume ends with the uninterrupted bytes."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    out, log = tmp_path / "run", tmp_path / "run.log"
    proc = start_simulate(["--scenario", TINY, "--out", str(out)], log)
    try:
        second = tmp_path / "run.partial" / "checkpoints" / "round-0002.json"
        deadline = time.monotonic() + 300  # bounds a hang, not a speed
        while not second.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert second.is_file(), log.read_text()[-3000:]
        below = descendants(proc.pid)
        assert below  # Ray's processes, which must not outlive the run
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == 128 + signum  # within 10 s
    finally:
        kill_tree(proc) if proc.poll() is None else None
    text = log.read_text()
    assert f"stopped by {signal.Signals(signum).name}" in text
    assert f"fedge simulate --resume {out}" in text
    gone = time.monotonic() + 5  # SIGKILL is delivered, not awaited
    while any(_alive(pid) for pid in below) and time.monotonic() < gone:
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in below if _alive(pid)}
    assert not left
    assert not out.exists()  # the run is unfinished, not half-written
    resumed = fedge("simulate", "--resume", str(out), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((tiny_run / "results.json").read_text())
    assert results["resumed_from"] == [2]  # round 3 was abandoned, not recorded
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert results["final_model_sha256"] == reference["final_model_sha256"]
    assert results["student"]["sha256"] == reference["student"]["sha256"]
