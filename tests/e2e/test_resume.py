"""Stop a real `fedge simulate` at every stage, by every signal, and resume: the same bytes."""

import json
import signal
import subprocess
import time
from pathlib import Path

from fedge.simulations.crash import kill_tree, start_simulate
from fedge.simulations.interrupt import descendants
from tests.e2e.processes import TINY, fedge


def test_a_run_stopped_at_every_stage_by_every_signal_resumes_to_the_same_bytes(
    tmp_path, tiny_run, monkeypatch
):
    """One run stopped up to five times, each stop resumed from where it left off.

    Ctrl-C while round 2 trains and SIGTERM once the bundle is written: each exits 128+signal
    at once, says in one line how to resume and leaves no Ray process. SIGKILL (a crash, no
    handler runs) while round 3 trains, while deploying, and once the results are written but
    not renamed. The run ends with the uninterrupted run's teacher and student, byte for byte,
    every client installed, and nothing left over. (One run for all of them: each start costs
    a Ray cluster.)
    """
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    out, partial = tmp_path / "run", tmp_path / "run.partial"
    checkpoint = str(partial / "checkpoints" / "round-{:04d}.json")
    stops = [
        ("round 1 checkpointed", signal.SIGINT, Path(checkpoint.format(1))),
        ("round 2 checkpointed", signal.SIGKILL, Path(checkpoint.format(2))),
        ("bundle written", signal.SIGTERM, partial / "compressed.json"),
        ("deploying", signal.SIGKILL, partial / "nodes"),
        ("results written, not renamed", signal.SIGKILL, partial / "results.json"),
    ]
    args = ["--scenario", TINY, "--out", str(out)]
    stopped = []
    for name, signum, ready in stops:
        if ready.exists():  # the stop before already got past this point: not caught here
            continue
        log = tmp_path / f"stopped-at-{len(stopped)}.log"
        proc = start_simulate(args, log)
        try:
            if not _wait_for(ready, proc, log):  # it finished before this point was caught
                assert proc.returncode == 0 and out.is_dir(), log.read_text()[-3000:]
                break
            if signum == signal.SIGKILL:
                kill_tree(proc)
            else:
                _stop_gracefully(proc, signum, log, out)
        finally:
            if proc.poll() is None:
                kill_tree(proc)
        stopped.append(name)
        if name.startswith("results written"):  # the kill may land just after the rename
            assert out.exists() != partial.exists()
        else:
            assert not out.exists()  # the final directory appears only at the end
        args = ["--resume", str(out)]
    assert stopped[:3] == [name for name, _, _ in stops[:3]], log.read_text()[-3000:]
    if not out.is_dir():
        resumed = fedge("simulate", "--resume", str(out), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    reference = json.loads((tiny_run / "results.json").read_text())
    assert results["resumed_from"] == [1, 2, 3]  # the round each stop caught was abandoned
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    assert results["final_model_sha256"] == reference["final_model_sha256"]
    assert results["student"]["sha256"] == reference["student"]["sha256"]
    assert all(c["installed"] for c in results["clients"])
    assert not partial.exists() and not (out / "checkpoints").exists()


def _wait_for(ready: Path, proc: subprocess.Popen, log: Path) -> bool:
    """Whether `ready` appeared while the run was still running."""
    deadline = time.monotonic() + 300  # bounds a hang, not a speed
    while proc.poll() is None and time.monotonic() < deadline:
        if ready.exists():
            return True
        time.sleep(0.05)
    assert proc.poll() is not None, f"no {ready.name} after 300 s: {log.read_text()[-3000:]}"
    return False


def _stop_gracefully(proc: subprocess.Popen, signum: int, log: Path, out: Path) -> None:
    """Send `signum`; the run must exit 128+signum at once, say how to resume, leave no process."""
    below = descendants(proc.pid)
    assert below  # Ray's processes, which must not outlive the run
    proc.send_signal(signum)
    # "at once": not after the run's remaining stages; 30 s leaves room for the other pytest
    # worker's Ray simulation on the same two cores
    assert proc.wait(timeout=30) == 128 + signum
    text = log.read_text()
    assert f"stopped by {signal.Signals(signum).name}" in text
    assert f"fedge simulate --resume {out}" in text
    gone = time.monotonic() + 5  # SIGKILL is delivered, not awaited
    while any(_alive(pid) for pid in below) and time.monotonic() < gone:
        time.sleep(0.1)
    left = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in below if _alive(pid)}
    assert not left


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for a reaper is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
