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


def run_simulate(args: list[str], log: Path) -> None:
    """`python -m fedge simulate ARGS` to the end, output appended to `log`; raises if it fails."""
    with open(log, "ab") as handle:
        subprocess.run(
            [sys.executable, "-m", "fedge", "simulate", *args],
            check=True,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


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
