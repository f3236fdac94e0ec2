"""Model work off the event loop: a few worker threads, bounded waiting, a time limit per request."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable
from typing import TypeVar

import onnxruntime as ort

T = TypeVar("T")
Work = Callable[[ort.RunOptions], T]  # gets the run's options: terminate=True stops the model


class PoolBusyError(Exception):
    """Every worker is busy and the waiting line is full."""


class PoolTimeoutError(Exception):
    """The work did not finish within the time limit (its model run was told to stop)."""


class InferencePool:
    """Runs work in `workers` threads; at most `waiting` more wait for one, the rest are refused.

    onnxruntime releases the GIL while a model runs, so the event loop keeps answering other
    connections. A request that outlives `timeout` seconds (waiting included) is answered with
    PoolTimeoutError and its run is stopped through `RunOptions.terminate` (onnxruntime checks
    it between nodes, inside Loop bodies too). Its worker counts as busy until the run ends,
    so a model that ignores the flag fills the pool and later requests are refused, not queued.
    """

    def __init__(self, workers: int, waiting: int, timeout: float) -> None:
        self.workers, self.capacity, self.timeout = workers, workers + waiting, timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="fedge-infer"
        )
        self._admitted = 0  # work items submitted and not finished (running or waiting)

    @property
    def admitted(self) -> int:
        """Work running or waiting for a worker, stopped runs that have not ended included."""
        return self._admitted

    async def run(self, work: Work[T]) -> T:
        """`work(options)` in a worker; PoolBusyError or PoolTimeoutError when it cannot be."""
        if self._admitted >= self.capacity:
            raise PoolBusyError(f"{self._admitted} requests are running or waiting")
        loop = asyncio.get_running_loop()
        options = ort.RunOptions()
        self._admitted += 1
        future = self._executor.submit(_unless_stopped, work, options)
        future.add_done_callback(lambda _: self._release_from_any_thread(loop))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            options.terminate = True  # a run under way stops at its next node
            raise PoolTimeoutError(f"no answer within {self.timeout:g} s") from None

    def shutdown(self) -> None:
        """Stop taking work; running work finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _release_from_any_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody counts any more
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._admitted -= 1


def _unless_stopped(work: Work[T], options: ort.RunOptions) -> T:
    """Work that timed out while it waited for a worker is not started at all."""
    if options.terminate:
        raise PoolTimeoutError("stopped before it started")
    return work(options)
