"""SIGKILL a real `fedge simulate` at every stage of one run and resume: the same bytes at the end."""

import json
import signal
import time
from pathlib import Path

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


def test_ctrl_c_then_sigterm_during_training_stop_the_run_at_once_and_it_resumes_to_the_same_bytes(
    tmp_path, tiny_run, monkeypatch
):
    """Ctrl-C while round 2 trains, then SIGTERM while the resumed run trains round 3: each exits
    128+signal at once, says in one line how to resume and leaves no Ray process; the second
    --resume ends with the uninterrupted bytes."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    out = tmp_path / "run"
    args = ["--scenario", TINY, "--out", str(out)]
    for signum, done in ((signal.SIGINT, 1), (signal.SIGTERM, 2)):
        _stop_after_round(args, done, signum, tmp_path / f"stopped-{signum}.log")
        args = ["--resume", str(out)]
    resumed = fedge("simulate", *args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((tiny_run / "results.json").read_text())
    assert results["resumed_from"] == [1, 2]  # the round each signal caught was abandoned
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert results["final_model_sha256"] == reference["final_model_sha256"]
    assert results["student"]["sha256"] == reference["student"]["sha256"]


def _stop_after_round(args: list[str], done: int, signum: int, log: Path) -> None:
    """Start `fedge simulate ARGS`, send `signum` once round `done` is checkpointed, check it."""
    out = Path(args[-1])
    proc = start_simulate(args, log)
    try:
        checkpoint = out.with_name(f"{out.name}.partial") / "checkpoints" / f"round-{done:04d}.json"
        deadline = time.monotonic() + 300  # bounds a hang, not a speed
        while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.is_file(), log.read_text()[-3000:]
        below = descendants(proc.pid)
        assert below  # Ray's processes, which must not outlive the run
        proc.send_signal(signum)
        # "at once": not after the run's remaining rounds and compression; 30 s leaves room
        # for the other pytest worker's Ray simulation on the same two cores
        assert proc.wait(timeout=30) == 128 + signum
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
