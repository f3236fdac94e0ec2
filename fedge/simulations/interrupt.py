"""Ctrl-C and SIGTERM stop a `fedge simulate` within seconds and leave it resumable.

Flower's simulation engine runs the ServerApp in a thread the main thread waits for; on a
KeyboardInterrupt the engine stops its nodes but the ServerApp thread keeps waiting for
replies that never come, so the process hangs. fedge does not need a graceful stop: every
completed round is checkpointed atomically, and a process killed anywhere resumes to the same
bytes (tests/e2e/test_resume.py). So a signal ends the run the way a kill would, but tidily:
one line saying how to resume, the Ray processes this run started are killed, and the process
exits with 128 + the signal number. The stage in progress (a round, the compression, the
deployment) is abandoned, not recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; none elsewhere), children before grandchildren."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier and p not in found]
        found += children
        frontier = children
    return found


def stop_now(signum: int, message: str) -> None:
    """Print `message`, kill every process this one started, exit 128 + `signum` at once."""
    sys.stderr.write(f"\n{message}\n")
    sys.stderr.flush()
    for handler in logging.getLogger("fedge").handlers:  # a log file keeps what was written
        with contextlib.suppress(Exception):
            handler.flush()
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_on_signals(out: Path) -> Iterator[None]:
    """While the block runs, SIGINT/SIGTERM stop the run and say how to resume it.

    Only in the main thread (where Python runs signal handlers); elsewhere, a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        stop_now(
            signum,
            f"fedge: stopped by {name}; the stage in progress was abandoned (a round, the "
            f"compression or the deployment). Continue from what was saved with: "
            f"fedge simulate --resume {out}",
        )

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
