"""Progress lines for long loops: one log line every few seconds, never one per step."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("fedge")


class Progress:
    """Log `what i/total` at most every `every` seconds (and nothing for short loops)."""

    def __init__(self, what: str, total: int, every: float = 10.0) -> None:
        self.what, self.total, self.every = what, total, every
        self.start = self.last = time.monotonic()

    def step(self, done: int, detail: str = "") -> None:
        """Record that `done` of `total` are finished."""
        now = time.monotonic()
        if now - self.last < self.every or done >= self.total:
            return
        self.last = now
        left = (now - self.start) / done * (self.total - done) if done else None
        log.info(
            "%s: %d/%d%s, %.0f s so far%s",
            self.what,
            done,
            self.total,
            f" ({detail})" if detail else "",
            now - self.start,
            "" if left is None else f", about {left:.0f} s left",
        )
