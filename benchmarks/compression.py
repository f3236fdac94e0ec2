"""Compression against its own teacher: size, accuracy, KD gain and speed, side by side.

    python benchmarks/compression.py --json OUT.json [--datasets digits,mnist1d] [--seeds 3]

Per dataset and seed: train the teacher centrally on all client data (this measures
compression, not federation), compress it with fedge's default recipe (the compression phase
of `fedge simulate`: KD on the unlabeled public pool, pruning, ONNX, guarded int8, device ops),
and measure in one process on the central test split: accuracy and bytes of the teacher (fp32
ONNX) and the shipped student; latency at batch 1 and 64 of the teacher in torch eager, the
teacher in onnxruntime and the shipped student in onnxruntime, interleaved (BENCHMARKS.md:
1 thread each, >= 200 warm-up calls, 1000 calls at batch 1 and 200 at batch 64). The ablation
trains the same student architecture directly on the labeled client data, without
distillation. OUT holds per dataset the means over seeds and the per-seed rows.

With --sweep, the recipe is not fixed: per seed, every point of the grid is compressed and the
smallest one within --choose-drop validation points of the teacher is the one measured (the
choice `fedge compress --sweep` makes; the test split is not looked at until then).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.compression.export import ExportConfig, export_onnx
from fedge.core.config import RunConfig
from fedge.core.models import build_student, build_teacher, count_params
from fedge.core.ort import interleaved_latency_us, make_session, session_accuracy, session_call
from fedge.core.partition import build_federation
from fedge.core.training import evaluate, train
from fedge.pipeline.candidates import (
    DEFAULT_SWEEP_DROP,
    Choice,
    SweepGrid,
    choose,
    compress_candidates,
)
from fedge.pipeline.stages import CompressionConfig, Inputs, compress

TEACHER_EPOCHS = {"digits": 40, "mnist1d": 60}
MEANS = (
    "size_ratio",
    "accuracy_drop_pt",
    "kd_gain_pt",
    "speedup_b1_vs_torch",
    "speedup_b64_vs_torch",
    "speedup_b1_vs_ort",
    "speedup_b64_vs_ort",
    "teacher_accuracy",
    "student_accuracy",
    "direct_student_accuracy",
    "student_bytes",
)


def torch_call(model: torch.nn.Module, x: np.ndarray) -> Any:
    batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def call() -> Any:
        with torch.inference_mode():
            return model(batch)

    return call


def one_seed(
    dataset: str,
    seed: int,
    overrides: dict[str, Any],
    grid: SweepGrid | None = None,
    choose_drop: float = DEFAULT_SWEEP_DROP,
) -> dict[str, Any]:
    cfg = RunConfig.from_run_config(
        {"dataset": dataset, "seed": seed, "partition": "iid", **overrides}
    )
    fed = build_federation(cfg)
    prep, classes = fed.dataset.preprocessing, fed.dataset.num_classes
    shape, test = prep.input_shape, fed.server.test
    epochs = TEACHER_EPOCHS.get(dataset, 40)
    teacher = build_teacher(shape, classes, seed)
    t0 = time.monotonic()
    train(teacher, fed.client_x, fed.client_y, epochs=epochs, lr=0.05, batch_size=32, seed=seed)
    teacher.eval()
    t1 = time.monotonic()
    grid_rows: list[dict[str, Any]] = []
    if grid is None:
        compression = CompressionConfig.from_run(cfg)
        inputs = Inputs(teacher, fed.server.public_pool, fed.server.val, test, prep, classes)
        outcome = compress(compression, inputs)
    else:  # the configuration is chosen on the validation split, never on test
        candidates = compress_candidates(
            teacher,
            grid.configs(cfg),
            public_pool=fed.server.public_pool,
            val=fed.server.val,
            test=test,
            preprocessing=prep,
            num_classes=classes,
            teacher_val=evaluate(teacher, fed.server.val.x, fed.server.val.y)[1],
        )
        chosen = choose(candidates, Choice(max_accuracy_drop=choose_drop))
        compression, outcome = chosen.compression, chosen.outcome
        grid_rows = [c.row for c in candidates]
    t2 = time.monotonic()
    direct = build_student(shape, classes, compression["distill"].student, seed)
    train(direct, fed.client_x, fed.client_y, epochs=epochs, lr=0.05, batch_size=32, seed=seed)
    teacher_onnx = export_onnx(teacher, shape, ExportConfig())
    teacher_session, student_session = (
        make_session(teacher_onnx),
        make_session(outcome.student_bytes),
    )
    raw = prep.invert(test.x)
    teacher_acc = session_accuracy(teacher_session, test.x, test.y)
    student_acc = session_accuracy(student_session, raw, test.y)
    direct_acc = evaluate(direct, test.x, test.y)[1]
    x64 = np.resize(test.x, (64, *test.x.shape[1:]))
    raw64 = np.resize(raw, (64, *raw.shape[1:]))
    b1 = interleaved_latency_us(
        {
            "torch": torch_call(teacher, test.x[:1]),
            "ort": session_call(teacher_session, test.x[:1]),
            "student": session_call(student_session, raw[:1]),
        },
        iters=1000,
    )
    b64 = interleaved_latency_us(
        {
            "torch": torch_call(teacher, x64),
            "ort": session_call(teacher_session, x64),
            "student": session_call(student_session, raw64),
        },
        iters=200,
    )
    return {
        "dataset": dataset,
        "seed": seed,
        "teacher_params": count_params(teacher),
        "teacher_epochs": epochs,
        "teacher_accuracy": teacher_acc,
        "teacher_onnx_bytes": len(teacher_onnx),
        "student_accuracy": student_acc,
        "student_bytes": len(outcome.student_bytes),
        "student_params": outcome.student_params,
        "student_quantized": outcome.quantization.quantized,
        "quantization_reason": outcome.quantization.reason,
        "stages": outcome.stages,
        "direct_student_accuracy": direct_acc,
        "size_ratio": len(teacher_onnx) / len(outcome.student_bytes),
        "accuracy_drop_pt": (teacher_acc - student_acc) * 100,
        "kd_gain_pt": (student_acc - direct_acc) * 100,
        "latency_us": {"b1": b1, "b64": b64},
        "speedup_b1_vs_torch": b1["torch"]["p50"] / b1["student"]["p50"],
        "speedup_b64_vs_torch": b64["torch"]["p50"] / b64["student"]["p50"],
        "speedup_b1_vs_ort": b1["ort"]["p50"] / b1["student"]["p50"],
        "speedup_b64_vs_ort": b64["ort"]["p50"] / b64["student"]["p50"],
        "seconds": {"teacher": t1 - t0, "compression": t2 - t1},
        "chosen": compression.to_json(),
        "candidates": grid_rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a compression setting, e.g. --set student='\"small\"' --set prune-ratio=0.5",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="choose the recipe per seed on validation from a grid (as fedge compress --sweep)",
    )
    parser.add_argument("--sweep-students", default=",".join(SweepGrid().students))
    parser.add_argument("--sweep-prune", default="0,0.3")
    parser.add_argument("--sweep-quant", default="fp32,qdq,qoperator")
    parser.add_argument(
        "--choose-drop",
        type=float,
        default=DEFAULT_SWEEP_DROP,
        help="sweep: the smallest point within this many validation points of the teacher",
    )
    args = parser.parse_args()
    grid = None
    if args.sweep:
        grid = SweepGrid(
            students=tuple(args.sweep_students.split(",")),
            prune_ratios=tuple(float(r) for r in args.sweep_prune.split(",")),
            quant=tuple(args.sweep_quant.split(",")),
        )
    torch.set_num_threads(1)
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    out: dict[str, Any] = {
        "config": {
            "recipe": CompressionConfig.from_run(RunConfig.from_run_config(overrides)).to_json(),
            "overrides": overrides,
            "sweep": None
            if grid is None
            else {
                "students": grid.students,
                "prune_ratios": grid.prune_ratios,
                "quant": grid.quant,
                "choose_drop_pt": args.choose_drop,
            },
            "teacher_epochs": TEACHER_EPOCHS,
            "threads": 1,
            "machine": platform.platform(),
        },
        "datasets": {},
    }
    print(
        f"{'dataset':8} {'seed':>4} {'teacher':>8} {'student':>8} {'bytes':>7} {'ratio':>6} "
        f"{'drop':>6} {'kd gain':>7} {'b1 x':>6} {'b64 x':>6}"
    )
    for dataset in args.datasets.split(","):
        rows = []
        for seed in range(args.seeds):
            row = one_seed(dataset, seed, overrides, grid, args.choose_drop)
            rows.append(row)
            print(
                f"{dataset:8} {seed:4d} {row['teacher_accuracy'] * 100:7.2f}% "
                f"{row['student_accuracy'] * 100:7.2f}% {row['student_bytes']:7d} "
                f"{row['size_ratio']:6.1f} {row['accuracy_drop_pt']:6.2f} {row['kd_gain_pt']:7.2f} "
                f"{row['speedup_b1_vs_torch']:6.1f} {row['speedup_b64_vs_torch']:6.1f}"
            )
        out["datasets"][dataset] = {
            **{k: float(np.mean([r[k] for r in rows])) for k in MEANS},
            "seeds": rows,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    for dataset, summary in out["datasets"].items():
        print(
            f"{dataset}: size_ratio {summary['size_ratio']:.1f}, accuracy_drop_pt "
            f"{summary['accuracy_drop_pt']:.2f}, kd_gain_pt {summary['kd_gain_pt']:.2f}, "
            f"speedup b1/b64 vs torch {summary['speedup_b1_vs_torch']:.1f}/"
            f"{summary['speedup_b64_vs_torch']:.1f}, vs ort {summary['speedup_b1_vs_ort']:.1f}/"
            f"{summary['speedup_b64_vs_ort']:.1f}"
        )


if __name__ == "__main__":
    main()
