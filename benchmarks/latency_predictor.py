"""The latency predictor's error on this machine: profile and candidates timed apart, and together.

    python benchmarks/latency_predictor.py --json OUT.json [--repeats 3] [--pause 5]

The candidates are eight batch-1 students (four architectures from a few nodes to many, each
fp32 and int8), none of them a probe. Per repeat, two ways:

- apart: `fedge profile`'s own measurement (fedge.client.runtime.profile.measure) at one
  moment, the candidates timed `--pause` seconds later, as a device's profile and a later
  search are; this machine's drift between the two moments lands in the error;
- side by side: the probes and the candidates in the same rotated blocks
  (fedge.core.ort.blocked_latency_us), so the drift hits both alike; what is left is the
  predictor's extrapolation from probes to candidates (what tests/compression/test_latency.py
  asserts, relative only).

For each: Spearman's rank correlation of predicted vs measured p50, the scale (median of
measured / predicted: the absolute level), and the shape error (median relative error after
that one scale factor). Run it on a quiet machine; the load average is recorded beside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
from scipy.stats import spearmanr

from fedge.client.runtime.profile import measure
from fedge.compression.export import ExportConfig, export_onnx
from fedge.compression.latency import LatencyModel, fit
from fedge.compression.probes import INT8
from fedge.compression.quantize import quantize_int8
from fedge.core.models import build_student
from fedge.core.ort import blocked_latency_us, make_session, session_call
from fedge.core.partition import PublicPool
from fedge.core.profile import PROBE_DIR, Profile, probe_index

CANDIDATES = (
    "arch:c8k3p-relu",
    "arch:c16k3-c16k3p-h32-relu",
    "arch:c32k3-c32k3-c32k3p-h64-relu",
    "arch:c48k5-c48k5-c48k5-h128-hardswish",
)
BLOCKS, PER_BLOCK = 5, 100  # per side: 5 rotated blocks of 100 consecutive calls


def candidates(rng: np.random.Generator) -> dict[str, bytes]:
    """Each candidate architecture exported fp32 and quantized int8 (static, the probes' way)."""
    pool = PublicPool(rng.normal(size=(32, 1, 8, 8)).astype(np.float32))
    models = {}
    for spec in CANDIDATES:
        fp32 = export_onnx(build_student((1, 8, 8), 10, spec, 0), (1, 8, 8), ExportConfig())
        models[f"{spec} fp32"], models[f"{spec} int8"] = fp32, quantize_int8(fp32, pool, INT8)
    return models


def errors(model: LatencyModel, models: dict[str, bytes], p50: dict[str, float]) -> dict[str, Any]:
    """The predictor against measured p50s: rank, level and shape, and every row."""
    names = list(models)
    predicted = np.array([model.predict_us(models[n]) for n in names])
    actual = np.array([p50[n] for n in names])
    scale = float(np.median(actual / predicted))
    return {
        "spearman": float(spearmanr(predicted, actual)[0]),
        "scale": scale,
        "shape_error": float(np.median(np.abs(scale * predicted / actual - 1))),
        "rows": {
            n: {"predicted_us": float(p), "measured_us": float(a)}
            for n, p, a in zip(names, predicted, actual, strict=True)
        },
    }


def apart(models: dict[str, bytes], x: np.ndarray, pause: float) -> dict[str, Any]:
    """`fedge profile` now, the candidates `pause` seconds later."""
    raw = measure((1,), iters=BLOCKS * PER_BLOCK)
    latency = {n: {1: row["batches"]["1"]["p50_us"]} for n, row in raw["probes"].items()}
    time.sleep(pause)
    calls = {n: session_call(make_session(m), x) for n, m in models.items()}
    measured = blocked_latency_us(calls, blocks=BLOCKS, per_block=PER_BLOCK)
    profile = Profile(raw["device"], 1, (1,), latency)
    return errors(fit(profile), models, {n: t["p50"] for n, t in measured.items()})


def side_by_side(models: dict[str, bytes], x: np.ndarray, rng: np.random.Generator) -> dict:
    """The probes and the candidates in one blocked measurement."""
    calls: dict[str, Callable[[], object]] = {}
    for name, row in probe_index().items():
        probe_x = rng.normal(size=(1, *row["input_shape"])).astype(np.float32)
        session = make_session((PROBE_DIR / str(row["file"])).read_bytes())
        calls[f"probe {name}"] = session_call(session, probe_x)
    calls |= {n: session_call(make_session(m), x) for n, m in models.items()}
    measured = blocked_latency_us(calls, blocks=BLOCKS, per_block=PER_BLOCK)
    latency = {n.removeprefix("probe "): {1: t["p50"]} for n, t in measured.items() if "probe" in n}
    profile = Profile({"name": "this machine"}, 1, (1,), latency)
    return errors(fit(profile), models, {n: measured[n]["p50"] for n in models})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pause", type=float, default=5.0, help="seconds, apart mode")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    models = candidates(rng)
    x = rng.normal(size=(1, 1, 8, 8)).astype(np.float32)
    runs = []
    for repeat in range(args.repeats):
        runs.append(
            {
                "repeat": repeat,
                "apart": apart(models, x, args.pause),
                "side_by_side": side_by_side(models, x, rng),
            }
        )
    result = {
        "config": {
            "candidates": CANDIDATES,
            "blocks": BLOCKS,
            "per_block": PER_BLOCK,
            "repeats": args.repeats,
            "pause_s": args.pause,
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'repeat':>6} {'mode':>13} {'spearman':>9} {'scale':>6} {'shape err':>10}")
    for run in runs:
        for mode in ("apart", "side_by_side"):
            row = run[mode]
            print(
                f"{run['repeat']:>6} {mode:>13} {row['spearman']:>9.2f} {row['scale']:>6.2f} "
                f"{100 * row['shape_error']:>9.0f}%"
            )


if __name__ == "__main__":
    main()
