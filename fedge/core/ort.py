"""onnxruntime helpers (numpy + onnxruntime only): sessions, accuracy and interleaved latency."""

from __future__ import annotations

import functools
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from fedge.core import onnx_scan

# Fold DequantizeLinear of constant weights into fp32 weights when the session loads.
# onnxruntime keeps those nodes by default, to fuse them with quantized activations into int8
# kernels; a weight-only int8 graph (quant-mode weights) has no quantized activation to fuse
# with, and unfolded it ran 2-3x slower than its fp32 twin (ds-small on fmnist, batch 64).
FOLD_QDQ = "session.disable_quant_qdq"


@functools.cache
def int8_saturates() -> bool:
    """Whether this CPU's int8 kernels can saturate: x86 without VNNI (Linux's /proc/cpuinfo).

    onnxruntime runs u8s8 convolutions and matmuls on AVX2 and AVX-512 with VPMADDUBSW, whose
    16-bit intermediate sums saturate; VNNI (VPDPBUSD) does not. On such a CPU (this project's
    2026-12-06 host: avx2, no VNNI) a static int8 student's fused kernels moved probabilities
    by up to 0.84 from the same graph run without fusion. Elsewhere (ARM, VNNI, no cpuinfo): False.
    """
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    return saturating_cpu(platform.machine(), cpuinfo)


def saturating_cpu(machine: str, cpuinfo: str) -> bool:
    """int8_saturates for a machine name and /proc/cpuinfo text ("" when there is none)."""
    if machine.lower() not in ("x86_64", "amd64", "i686", "x86") or not cpuinfo:
        return False
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    return not any("vnni" in flag for flag in flags.split())  # avx512_vnni, avx_vnni, ...


def weight_only(model_bytes: bytes) -> bool:
    """Whether only weights are quantized: DequantizeLinear nodes and no QuantizeLinear.

    Bytes that are not an ONNX protobuf are not (onnxruntime then refuses them itself).
    """
    try:
        ops = onnx_scan.op_types(model_bytes)
    except onnx_scan.MalformedModelError:
        return False
    return "DequantizeLinear" in ops and "QuantizeLinear" not in ops


def cpu_options(model_bytes: bytes) -> ort.SessionOptions:
    """What BENCHMARKS.md measures: one thread, sequential, all optimisations.

    A weight-only int8 model's weights are dequantized once, at load (FOLD_QDQ): int8 in
    flash and on the wire, fp32 kernels at run time. So is every quantized model on a CPU
    whose int8 kernels saturate (`int8_saturates`): exact results before int8 speed.
    """
    options = _one_thread()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if weight_only(model_bytes) or int8_saturates():
        options.add_session_config_entry(FOLD_QDQ, "1")
    return options


def _one_thread() -> ort.SessionOptions:
    """One intra-op and one inter-op thread, sequential execution."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def make_session(model_bytes: bytes) -> ort.InferenceSession:
    """A CPU session with `cpu_options`."""
    options = cpu_options(model_bytes)
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def session_logits(
    session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Run `session` over x in batches; returns the first output."""
    name = session.get_inputs()[0].name
    outs = [
        session.run(None, {name: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs)


def session_accuracy(session: ort.InferenceSession, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1]."""
    return float((session_logits(session, x).argmax(1) == y).mean())


Timings = dict[str, dict[str, float]]  # side -> statistic -> microseconds


def interleaved_latency_us(
    calls: dict[str, Callable[[], object]],
    *,
    warmup: int = 200,
    iters: int = 1000,
    clock: Callable[[], int] = time.perf_counter_ns,
    cpu_clock: Callable[[], int] = time.thread_time_ns,
) -> Timings:
    """p50/p95 wall and thread-CPU microseconds per call, the sides interleaved (A B A B ...).

    `clock` and `cpu_clock` return nanoseconds (tests pass fakes to check the bookkeeping).
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    wall: dict[str, list[int]] = {n: [] for n in names}
    cpu: dict[str, list[int]] = {n: [] for n in names}
    for _ in range(iters):
        for name in names:
            c0, w0 = cpu_clock(), clock()
            calls[name]()
            w1, c1 = clock(), cpu_clock()
            wall[name].append(w1 - w0)
            cpu[name].append(c1 - c0)
    return {
        n: {
            "p50": float(np.percentile(wall[n], 50)) / 1e3,
            "p95": float(np.percentile(wall[n], 95)) / 1e3,
            "cpu_p50": float(np.percentile(cpu[n], 50)) / 1e3,
        }
        for n in names
    }


def blocked_latency_us(
    calls: dict[str, Callable[[], object]],
    *,
    blocks: int = 5,
    per_block: int = 200,
    clock: Callable[[], int] = time.perf_counter_ns,
) -> Timings:
    """p50/p95 microseconds per call, each side timed in consecutive blocks, blocks rotated.

    For many sides: interleaving call by call (interleaved_latency_us) runs every model with
    the others' code and data in the caches, slower than a device that calls one model again
    and again; a block of consecutive calls keeps the caches as the device has them, and
    rotating the blocks spreads the machine's drift over every side. `clock` returns
    nanoseconds.
    """
    times: dict[str, list[int]] = {n: [] for n in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            for _ in range(max(10, per_block // 10)):  # warm this side's caches again
                call()
            for _ in range(per_block):
                start = clock()
                call()
                times[name].append(clock() - start)
    return {
        n: {
            "p50": float(np.percentile(t, 50)) / 1e3,
            "p95": float(np.percentile(t, 95)) / 1e3,
        }
        for n, t in times.items()
    }


def settled_latency_us(
    calls: dict[str, Callable[[], object]],
    *,
    tries: int = 3,
    pause_s: float = 0.5,
    measure: Callable[..., Timings] = blocked_latency_us,
    sleep: Callable[[float], object] = time.sleep,
) -> dict[str, float]:
    """The best p50 (µs) of `tries` blocked measurements `pause_s` apart, per side.

    As timeit takes the best of its repeats: on a shared machine a slowdown of a few seconds
    (seen here: the same model at 18 µs and 33 µs a minute apart, nothing else running) must not
    be taken for the model's speed, and the fastest repeat is the one it disturbed least.
    `measure` times one try (blocked_latency_us's keywords); `sleep` waits between tries.
    """
    best = {name: math.inf for name in calls}
    for attempt in range(tries):
        if attempt:
            sleep(pause_s)
        for name, timing in measure(calls, blocks=3, per_block=200).items():
            best[name] = min(best[name], timing["p50"])
    return best


def session_call(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    """A zero-argument closure that runs `session` on a fixed input (for latency timing)."""
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    return lambda: session.run(None, feed)


def ort_format_session(model_bytes: bytes) -> ort.InferenceSession:
    """A session on an ORT-format model (ORT Mobile's), as a phone's onnxruntime loads it.

    One thread, sequential; the runtime optimizations saved in the file are replayed. The ORT
    format holds no external data. Raises onnxruntime's own exceptions when it does not load.
    """
    options = _one_thread()
    options.log_severity_level = 4
    options.add_session_config_entry("session.load_model_format", "ORT")
    options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


class BatchOne:
    """A session whose model takes batch 1 only (an ORT artifact), run one sample at a time.

    Offers the slice of InferenceSession the device uses (get_inputs, get_outputs, run), so
    the predictor and the device-model check treat it like any other session.
    """

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    def get_inputs(self) -> list[Any]:
        """The model's inputs (their batch axis is 1)."""
        return list(self._session.get_inputs())

    def get_outputs(self) -> list[Any]:
        """The model's outputs."""
        return list(self._session.get_outputs())

    def run(
        self, output_names: list[str] | None, feed: dict[str, Any], run_options: Any = None
    ) -> list[Any]:
        """The outputs for the whole batch, concatenated from one run per sample."""
        name, batch = next(iter(feed.items()))
        parts = [self._session.run(output_names, {name: batch[i : i + 1]}, run_options)
                 for i in range(len(batch))]  # fmt: skip
        if not parts:  # no samples: the outputs' shapes, with no rows
            zero = np.zeros((1, *batch.shape[1:]), batch.dtype)
            return [out[:0] for out in self._session.run(output_names, {name: zero}, run_options)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
