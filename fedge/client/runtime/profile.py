"""`fedge profile` on a device: what it is, and its onnxruntime latency on the probe models.

Needs numpy and onnxruntime only (no torch, no network). The probes run in sessions set up as
the device runs its student (CPU, sequential, all optimisations, one intra-op thread), each in
blocks of consecutive calls (as a device calls its one model), the blocks rotated over the
probes so that a slow moment of the machine hits every probe alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fedge.core.ort import blocked_latency_us, make_session
from fedge.core.profile import PROBE_DIR, VERSION, probe_index


def device_facts(name: str = "") -> dict[str, Any]:
    """CPU, cores, memory, onnxruntime version and providers, OS."""
    cpu = platform.processor() or platform.machine()
    try:  # Linux names the CPU model here; other systems keep platform's answer
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    with contextlib.suppress(ValueError, OSError, AttributeError):  # not every OS has them
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "name": name,
        "cpu": cpu,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "os": platform.platform(),
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }


def measure(
    batches: tuple[int, ...] = (1, 32),
    iters: int = 300,
    name: str = "",
) -> dict[str, Any]:
    """The profile as `fedge profile` writes it (fedge.core.profile reads it back)."""
    index = probe_index()
    rng = np.random.default_rng(0)
    calls: dict[int, dict[str, Callable[[], object]]] = {b: {} for b in batches}
    for probe, row in index.items():
        model = (PROBE_DIR / str(row["file"])).read_bytes()
        if hashlib.sha256(model).hexdigest() != row["sha256"]:
            raise ValueError(f"probe {probe} does not match its sha256: the install is damaged")
        sess = make_session(model)  # as the device runs it: one thread, sequential
        feed_name = sess.get_inputs()[0].name
        for batch in batches:
            x = rng.normal(size=(batch, *row["input_shape"])).astype(np.float32)
            calls[batch][probe] = _call(sess, {feed_name: x})
    started = time.monotonic()
    blocks = 5  # each probe in blocks of consecutive calls, as a device calls its model
    measured = {
        b: blocked_latency_us(calls[b], blocks=blocks, per_block=max(4, iters // blocks))
        for b in batches
    }
    return {
        "fedge_profile": VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device_facts(name),
        "threads": 1,
        "batches": list(batches),
        "iters": iters,
        "seconds": time.monotonic() - started,
        "probes": {
            probe: {
                "sha256": row["sha256"],
                "batches": {
                    str(b): {
                        "p50_us": measured[b][probe]["p50"],
                        "p95_us": measured[b][probe]["p95"],
                    }
                    for b in batches
                },
            }
            for probe, row in index.items()
        },
    }


def _call(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: sess.run(None, feed)
