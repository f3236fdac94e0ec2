"""What several benchmarks measure the same way: a command's wall time and its process tree's peak RSS."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def run_measured(cmd: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> dict[str, float]:
    """Run `cmd` (output appended to `log`), sampling its process tree's RSS every half second.

    Returns wall seconds, the peak of the tree's summed RSS in GB (shared pages count in
    every process that maps them: an upper bound) and of its summed PSS (shared pages divided).
    RuntimeError with the log's tail if the exit code is not in `ok`.
    """
    start, peak, peak_pss = time.monotonic(), 0, 0
    with log.open("ab") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        while proc.poll() is None:
            pids = tree_pids(proc.pid)
            peak = max(peak, sum(_rss(p) for p in pids))
            peak_pss = max(peak_pss, sum(_pss(p) for p in pids))
            time.sleep(0.5)
    if proc.returncode not in ok:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}"
        )
    return {
        "wall_s": time.monotonic() - start,
        "peak_rss_gb": peak / 1e9,
        "peak_pss_gb": peak_pss / 1e9,  # shared pages divided among the tree's processes
    }


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (Linux /proc)."""
    return sum(_rss(p) for p in tree_pids(pid))


def tree_pids(pid: int) -> set[int]:
    """`pid` and all its descendants."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    return tree


def _rss(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[21]) * PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _pss(pid: int) -> int:
    """Proportional set size (bytes): shared pages divided among the processes that map them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
