"""Device targets of shipped students: tflite in LiteRT and TensorFlow Lite Micro, ort for NNAPI.

For each kept run (RUN/results.json and RUN/bundle/model.onnx), the shipped ONNX model becomes a
full-integer int8 tflite, run on the whole test split in LiteRT and in TFLM at the smallest
arena TFLM accepts; the ORT artifact's NNAPI verdict comes from onnxruntime's checker. A static
int8 model (quant-mode static: what a microcontroller tier ships) keeps its own activation grids
in the tflite; a weight-only or fp32 model's activations are calibrated on 256 raw public-pool
samples. Over the student family (untrained: arenas depend on shapes only), the arena fedge
plans on each tflite graph is compared with TFLM's own figure. `tiers_nodes_within_budget` is
read from benchmarks/results/tiers.json (benchmarks/tiers.py measures it).

Usage, on the fmnist benchmark's runs (W/fmnist-S from `fedge simulate --scenario
simulations/fmnist.toml --seed S`, W/fmnist-S-static from `fedge compress W/fmnist-S
--quant-mode static --device-targets onnx,tflite`):
    python benchmarks/targets.py --runs W/fmnist-0-static W/fmnist-1-static W/fmnist-2-static \
        --json benchmarks/results/targets-fmnist.json
    python benchmarks/targets.py --runs W/fmnist-0 W/fmnist-1 W/fmnist-2 \
        --json benchmarks/results/targets-fmnist-weights.json
Needs the litert extra: pip install -e ".[litert]".
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.compression.resources import measure
from fedge.compression.targets import ort_artifact
from fedge.compression.tflite import to_tflite
from fedge.core.config import RunConfig
from fedge.core.data import Preprocessing
from fedge.core.litert import (
    litert_logits,
    tflm_arena,
    tflm_logits,
    tflm_min_arena,
)
from fedge.core.models import SEPARABLE_STUDENTS, STUDENT_WIDTHS, build_student
from fedge.core.ort import make_session
from fedge.core.partition import build_federation
from fedge.core.tflite_plan import planned_arena

CALIBRATION = 256
TIERS_JSON = Path(__file__).parent / "results" / "tiers.json"


def one_run(run: Path) -> dict[str, Any]:
    """tflite, TFLM and ORT figures of one run's shipped student on its test split."""
    cfg = RunConfig.from_run_config(json.loads((run / "results.json").read_text())["config"])
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    shipped = (run / "bundle" / "model.onnx").read_bytes()
    x = prep.invert(fed.server.test.x).astype(np.float32)
    y = fed.server.test.y
    calibration = prep.invert(fed.server.public_pool.x)[:CALIBRATION]
    session = make_session(shipped)
    onnx_labels = session.run(["logits"], {session.get_inputs()[0].name: x})[0].argmax(1)
    start = time.perf_counter()
    model = to_tflite(shipped, calibration).tflite_bytes
    convert_s = time.perf_counter() - start
    arena = tflm_arena(model)
    smallest = tflm_min_arena(model)
    lite = litert_logits(model, x).argmax(1)
    micro = tflm_logits(model, x, smallest).argmax(1)
    return {
        "run": run.name,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "student": json.loads((run / "results.json").read_text())
        .get("student", {})
        .get("architecture"),
        "quant_mode": cfg.quant_mode,
        "onnx_bytes": len(shipped),
        "onnx_accuracy": float((onnx_labels == y).mean()),
        "tflite_accuracy": float((lite == y).mean()),
        "tflm_accuracy": float((micro == y).mean()),
        "tflite_label_agreement": float((lite == onnx_labels).mean()),
        "tflm_label_agreement": float((micro == onnx_labels).mean()),
        "tflm_vs_tflite_agreement": float((micro == lite).mean()),
        "tflm_flash_bytes": len(model),
        "tflm_arena_bytes": arena.total,
        "tflm_arena_head_bytes": arena.head,
        "tflm_arena_tail_bytes": arena.tail,
        "tflm_min_arena_bytes": smallest,
        "planned_arena_bytes": planned_arena(model),
        "onnx_planned_arena_bytes": measure(shipped).arena_bytes,
        "ort_nnapi_as_is": ort_artifact(shipped).nnapi.as_is,
        "convert_s": convert_s,
        "test_samples": len(y),
    }


def family_arenas(shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Planned vs TFLM arena for every family student at `shape` (untrained, random calibration)."""
    rows = []
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 1, (64, *shape)).astype(np.float32)
    prep = Preprocessing(shift=(0.5,) * shape[0], scale=(2.0,) * shape[0], input_shape=shape)
    for name in [*STUDENT_WIDTHS, *SEPARABLE_STUDENTS]:
        student = build_student(shape, 10, name, seed=0)
        device = fold_device_ops(
            export_onnx(student, shape, ExportConfig()), prep, prep.apply(calibration[:2])
        )
        model = to_tflite(device, calibration).tflite_bytes
        arena, planned = tflm_arena(model), planned_arena(model)
        rows.append(
            {
                "student": name,
                "shape": list(shape),
                "flash_bytes": len(model),
                "planned_arena_bytes": planned,
                "tflm_arena_head_bytes": arena.head,
                "tflm_arena_bytes": arena.total,
                "error": abs(planned - arena.head) / arena.head,
            }
        )
    return rows


def summarize(rows: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Mean and [min, max] over runs of each numeric key."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [float(r[key]) for r in rows]
        out[key] = statistics.fmean(values)
        out.setdefault("spread", {})[key] = [min(values), max(values)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="kept run directories")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument(
        "--family-shapes",
        default="1x28x28,1x40,1x8x8",
        help="input shapes for the arena check over the family (comma-separated, x-joined)",
    )
    args = parser.parse_args()
    for run in args.runs:
        if not (run / "results.json").is_file() or not (run / "bundle" / "model.onnx").is_file():
            sys.exit(f"error: {run} holds no results.json and bundle/model.onnx (a kept run)")
    rows = []
    for run in args.runs:
        rows.append(one_run(run))
        r = rows[-1]
        print(
            f"{run.name}: onnx {r['onnx_accuracy']:.4f} tflm {r['tflm_accuracy']:.4f} "
            f"agreement tflm {r['tflm_label_agreement']:.4f} tflite "
            f"{r['tflite_label_agreement']:.4f}; flash {r['tflm_flash_bytes']} B, arena "
            f"{r['tflm_arena_bytes']} B (min {r['tflm_min_arena_bytes']}), NNAPI as is "
            f"{r['ort_nnapi_as_is']}",
            flush=True,
        )
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.family_shapes.split(",")]
    family = [row for shape in shapes for row in family_arenas(shape)]
    for row in family:
        print(
            f"  {row['student']:12s} {row['shape']}: planned {row['planned_arena_bytes']} "
            f"TFLM head {row['tflm_arena_head_bytes']} (error {row['error']:.1%})"
        )
    keys = [
        "onnx_accuracy",
        "tflite_accuracy",
        "tflm_accuracy",
        "tflite_label_agreement",
        "tflm_label_agreement",
        "tflm_flash_bytes",
        "tflm_arena_bytes",
        "tflm_min_arena_bytes",
        "convert_s",
    ]
    tiers = json.loads(TIERS_JSON.read_text()) if TIERS_JSON.is_file() else {}
    result = {
        "config": {
            "command": " ".join(Path(a).name if Path(a).is_absolute() else a for a in sys.argv),
            "calibration_samples": CALIBRATION,
            "machine": platform.platform(),
            "arena_rule": "fedge's planner on the tflite graph vs TFLM's non-persistent (head) arena",
        },
        **summarize(rows, keys),
        "ort_nnapi_as_is": all(r["ort_nnapi_as_is"] for r in rows),
        "arena_prediction_error_max": max(r["error"] for r in family),
        "tiers_nodes_within_budget": tiers.get("tiers_nodes_within_budget"),
        "tiers_source": str(TIERS_JSON.name) if tiers else None,
        "runs": rows,
        "family": family,
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
