"""Crash a `fedge simulate` process tree on purpose (kill/resume benchmarks and tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def start_simulate(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`python -m fedge simulate ARGS` in its own session (so the whole tree can be killed)."""
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "fedge", "simulate", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_simulate(args: list[str], log: Path, finished: tuple[int, ...] = (0,)) -> int:
    """`python -m fedge simulate ARGS` to the end, output appended to `log`; its exit code.

    `finished`: the exit codes of a run that finished (e.g. 3, the quality gate refused to
    ship); any other code raises CalledProcessError.
    """
    return run_fedge(["simulate", *args], log, finished)


def run_fedge(
    args: list[str],
    log: Path,
    finished: tuple[int, ...] = (0,),
    env: dict[str, str] | None = None,
) -> int:
    """`python -m fedge ARGS` (any command; `env` added to this one's) as `run_simulate` runs."""
    command = [sys.executable, "-m", "fedge", *args]
    environment = {**os.environ, **env} if env else None
    with open(log, "ab") as handle:
        done = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env=environment, check=False
        )
    if done.returncode not in finished:
        raise subprocess.CalledProcessError(done.returncode, command)
    return done.returncode


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process's whole session (fedge, Ray workers), then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float) -> bool:
    """SIGKILL the tree once `ready()` holds; False if the process ended first or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            kill_tree(proc)
            return True
        time.sleep(0.05)
    if proc.poll() is None:
        kill_tree(proc)
    return False
