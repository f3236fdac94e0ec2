"""The federated pipeline's student against its teacher and against federating the student directly.

    python benchmarks/compression.py --json OUT.json [--datasets digits,mnist1d] [--seeds 5]
        [--set KEY=VALUE ...] [--audit-seed 0] [--shadows 16] [--work DIR]
        [--reuse | --reuse-teachers] [--skip direct,default-run,centralized] [--latency-only]
        [--mcu-student SPEC]

Per dataset and seed, the real pipeline: `fedge simulate` (Dirichlet alpha 0.5, 10 clients,
the default recipe unless --set changes it), then from its results: teacher and shipped student
accuracy on the central test split, bytes, the recipe shipped. Side by side:
- direct: the same student architecture federated directly with FedAvg for the same rounds
  (`fedge simulate --teacher <student>`), its accuracy and training bytes, so `kd_gain_pt` says
  what the teacher-then-compress loop buys over simply federating a small model;
- reproducible: seed 0 run twice gives the same student sha256, and `fedge compress` of that
  run's teacher with the same settings gives it too;
- speed: batch-1 and batch-64 p50 of the teacher in torch eager and in onnxruntime and of the
  shipped student in onnxruntime, interleaved, one thread (BENCHMARKS.md);
- leakage: `fedge audit` (online LiRA) of --audit-seed: the student's TPR at 1 % FPR as a
  multiple of the teacher's;
- fmnist's microcontroller student: the shipped student, or with --mcu-student another one
  distilled from the same teacher (`fedge compress`, the same recipe), with int8 activations
  too (mcu_student).
OUT holds per dataset the means over seeds (with the worst seed and a 95 % t-interval of the
accuracy drop) and every per-seed row.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from measure import run_measured
from scipy import stats

from fedge.client.runtime.profile import device_facts
from fedge.compression.minify import minified_size
from fedge.compression.quantize import QuantizeConfig, quantize
from fedge.core.augment import teacher_view
from fedge.core.config import RunConfig
from fedge.core.models import build_teacher
from fedge.core.ort import (
    cpu_options,
    interleaved_latency_us,
    make_session,
    session_accuracy,
    session_call,
)
from fedge.core.partition import PublicPool, Split, build_federation, client_data
from fedge.core.training import epochs_of_batches, evaluate

# The fmnist federation and recipe: simulations/fmnist.toml (40 rounds; the separable student
# in weight-only int8). Its microcontroller figure is the shipped student with int8
# activations too (mcu_student).
FMNIST_SCENARIO = Path(__file__).resolve().parent.parent / "simulations" / "fmnist.toml"
DATASET_SETTINGS = {"fmnist": ["--scenario", str(FMNIST_SCENARIO)]}
FMNIST_MEANS = (
    "centralized_accuracy",
    "centralized_flip_shift_accuracy",
    "mcu_student_accuracy",
    "mcu_student_bytes",
    "shipped_mcu_accuracy",
    "shipped_mcu_bytes",
)
MEANS = (
    "size_ratio",
    "accuracy_drop_pt",
    "kd_gain_pt",
    "teacher_accuracy",
    "student_accuracy",
    "direct_student_accuracy",
    "direct_train_bytes",
    "train_bytes",
    "student_train_bytes",
    "student_bytes",
    "speedup_b1_vs_torch",
    "speedup_b64_vs_torch",
    "speedup_b1_vs_ort",
    "speedup_b64_vs_ort",
    "wall_s",
)


def fedge(*args: str, log: Path) -> None:
    """`python -m fedge ARGS`, output appended to `log`; raises with the log's tail on failure."""
    with open(log, "ab") as handle:
        done = subprocess.run([sys.executable, "-m", "fedge", *args], stdout=handle, stderr=handle)
    if done.returncode != 0:
        raise RuntimeError(f"fedge {' '.join(args)} failed:\n{log.read_text()[-3000:]}")


REUSE = {"runs": False, "teachers": False}  # --reuse, --reuse-teachers
SKIP: set[str] = set()  # --skip: parts not measured this time (direct, default-run, centralized)
MCU: dict[
    str, str
] = {}  # --mcu-student: "student", the microcontroller student if not the shipped one


def recompress(kept: Path, settings: list[str], out: Path, log: Path) -> dict[str, Any]:
    """`fedge compress` of a kept run's teacher with `settings`: the run's figures, new student.

    The teacher, its training traffic and training time are the kept run's; the student, its
    bytes and the compression time are new. `wall_s`: the kept training plus this compression.
    """
    start = time.monotonic()
    if not (REUSE["runs"] and (out / "results.json").is_file()):
        fedge("compress", str(kept), *settings, "--out", str(out), log=log)
    results = json.loads((out / "results.json").read_text())
    source = json.loads((kept / "results.json").read_text())
    results["communication"] = {**source["communication"], "student_train_bytes": 0}
    results["wall_s"] = source["timing_s"]["training"] + (time.monotonic() - start)
    if results.get("student_rounds"):
        raise ValueError("--reuse-teachers measures students distilled on the public pool only")
    return results


def simulate(dataset: str, seed: int, settings: list[str], out: Path, log: Path) -> dict[str, Any]:
    base = ["--dataset", dataset, "--seed", str(seed), "--partition", "dirichlet", "--alpha", "0.5"]
    start = time.monotonic()
    if REUSE["runs"] and (out / "results.json").is_file():
        results = json.loads((out / "results.json").read_text())
        results["wall_s"] = results["timing_s"]["total"]  # the run's own figure
        return results
    fedge("simulate", *base, "--clients", "10", *settings, "--out", str(out), log=log)
    results = json.loads((out / "results.json").read_text())
    results["wall_s"] = time.monotonic() - start
    return results


def latency(run: Path, teacher_onnx: Path | None = None) -> dict[str, float]:
    """Teacher in torch eager and onnxruntime vs the shipped student, interleaved, one thread.

    `teacher_onnx`: where the teacher is when `run` is a `fedge compress` output (default:
    the run's own teacher.onnx).
    """
    cfg = RunConfig.from_run_config(json.loads((run / "results.json").read_text())["config"])
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    torch.set_num_threads(1)
    # Latency does not depend on the weights' values: an untrained teacher of the same shape.
    teacher = build_teacher(prep.input_shape, fed.dataset.num_classes, cfg.seed, cfg.teacher).eval()
    teacher_ort = make_session((teacher_onnx or run / "teacher.onnx").read_bytes())
    student = make_session((run / "bundle" / "model.onnx").read_bytes())
    x = fed.server.test.x
    figures: dict[str, Any] = {}
    for name, batch, iters in (("b1", x[:1], 1000), ("b64", np.resize(x, (64, *x.shape[1:])), 200)):
        tensor = torch.from_numpy(np.ascontiguousarray(batch))

        def eager(t: torch.Tensor = tensor) -> Any:
            with torch.inference_mode():
                return teacher(t)

        timing = interleaved_latency_us(
            {
                "torch": eager,
                "ort": session_call(teacher_ort, batch),
                "student": session_call(student, prep.invert(batch)),
            },
            iters=iters,
        )
        figures[f"speedup_{name}_vs_torch"] = timing["torch"]["p50"] / timing["student"]["p50"]
        figures[f"speedup_{name}_vs_ort"] = timing["ort"]["p50"] / timing["student"]["p50"]
        figures[f"{name}_us"] = {side: timing[side]["p50"] for side in timing}
    return figures


def centralized(run: Path, views: str | None = None) -> float:
    """The teacher's architecture trained in one process on every client's training data.

    As many samples as the federated teacher's clients trained in all, with their optimizer
    (SGD, momentum 0.9, the run's lr and batch size) and augmentation (or `views`, an
    `augment` value), and a cosine-decayed learning rate (how a model is trained centrally):
    what federation costs, side by side. Returns its test accuracy.
    """
    cfg = RunConfig.from_run_config(json.loads((run / "results.json").read_text())["config"])
    fed = build_federation(cfg)
    parts = [client_data(fed, p, cfg).train for p in range(cfg.clients)]
    x = torch.from_numpy(np.concatenate([p.x for p in parts]))
    y = torch.from_numpy(np.concatenate([p.y for p in parts]))
    per_round = 0
    for part in parts:  # what each client trained in a round (its epochs, capped by the budget)
        epochs = epochs_of_batches(
            len(part), cfg.batch_size, cfg.local_epochs, torch.Generator(), cfg.local_sample_budget
        )
        per_round += sum(len(b) for epoch in epochs for b in epoch)
    samples = round(per_round * cfg.rounds * cfg.fraction_train)
    steps = math.ceil(samples / cfg.batch_size)
    torch.set_num_threads(2)  # one process on both cores (the figure is accuracy, not speed)
    prep = fed.dataset.preprocessing
    model = build_teacher(prep.input_shape, fed.dataset.num_classes, cfg.seed, cfg.teacher)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    view = teacher_view(views or cfg.augment)  # the clients' augmentation, unless told
    start, done = time.monotonic(), 0
    model.train()
    while done < steps:
        for batch in torch.randperm(len(y), generator=generator).split(cfg.batch_size):
            optimizer.zero_grad()
            inputs = x[batch] if view is None else view(x[batch], generator)
            torch.nn.functional.cross_entropy(model(inputs), y[batch]).backward()
            optimizer.step()
            schedule.step()
            done += 1
            if done == steps:
                break
    accuracy = evaluate(model, fed.server.test.x, fed.server.test.y)[1]
    print(f"centralized ({views or cfg.augment}, {samples} samples): {100 * accuracy:.2f} % in "
          f"{time.monotonic() - start:.0f} s", flush=True)  # fmt: skip
    return float(accuracy)


def mcu_student(run: Path) -> dict[str, Any]:
    """The shipped student with int8 activations too: what a microcontroller's int8 kernels run.

    The shipped weight-only int8 model is folded to fp32 by onnxruntime (its weights already on
    the int8 grid), then quantized static (QDQ, per channel, calibrated on the raw public pool)
    and measured on the raw test split. Unlike `quant-mode static`, which quantizes the student
    before the preprocessing is folded in, this quantizes the device model: the raw input and
    the preprocessing's Mul/Add are int8 too, as on a microcontroller.
    """
    cfg = RunConfig.from_run_config(json.loads((run / "results.json").read_text())["config"])
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    options = cpu_options(shipped := (run / "bundle" / "model.onnx").read_bytes())
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with tempfile.TemporaryDirectory(prefix="fedge-mcu-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "fp32.onnx")
        ort.InferenceSession(shipped, options, providers=["CPUExecutionProvider"])
        fp32 = Path(options.optimized_model_filepath).read_bytes()
    pool = PublicPool(x=prep.invert(fed.server.public_pool.x))
    val = Split(x=prep.invert(fed.server.val.x), y=fed.server.val.y)
    static = QuantizeConfig.from_run(cfg.replace(quant_mode="static", quant_format="qdq"))
    result = quantize(fp32, pool, val, static)
    test = fed.server.test
    return {
        "mcu_student_accuracy": session_accuracy(
            make_session(result.model_bytes), prep.invert(test.x), test.y
        ),
        "mcu_student_bytes": minified_size(result.model_bytes),
        "mcu_student_int8": result.quantized,
        "mcu_student_reason": result.reason,
    }


def mcu_of(kept: Path, settings: list[str], shipped: Path, log: Path) -> dict[str, Any]:
    """The microcontroller figures: the shipped student's, and --mcu-student's from its teacher.

    `mcu_student_*` is the microcontroller student (the shipped one unless --mcu-student);
    `shipped_mcu_*` is always the shipped student with int8 activations, for the comparison.
    """
    ours = mcu_student(shipped)
    own = {"shipped_mcu_accuracy": ours["mcu_student_accuracy"],
           "shipped_mcu_bytes": ours["mcu_student_bytes"]}  # fmt: skip
    student = MCU.get("student")
    if student is None:
        return ours | own
    out = kept.with_name(f"{kept.name}-mcu")
    results = recompress(kept, [*settings, "--student", student], out, log)
    student_row = results["student"]
    weights_int8 = {"mcu_student_weights_int8_accuracy": student_row["accuracy"]}  # as it ships
    return (
        mcu_student(out)
        | own
        | weights_int8
        | {"mcu_student_architecture": student_row["architecture"]}
    )


def one_seed(dataset: str, seed: int, settings: list[str], work: Path, log: Path) -> dict[str, Any]:
    settings = [*DATASET_SETTINGS.get(dataset, []), *settings]
    kept, teacher_onnx = work / f"{dataset}-{seed}", None
    if REUSE["teachers"]:
        run_dir = work / f"{dataset}-{seed}-recompressed"
        run = recompress(kept, settings, run_dir, log)
        teacher_onnx = kept / "teacher.onnx"
    else:
        run_dir = kept
        run = simulate(dataset, seed, settings, run_dir, log)
    student_name = run["student"]["architecture"]
    direct_dir = work / f"{dataset}-{seed}-direct"
    direct = None
    if "direct" not in SKIP:
        direct_settings = [*settings, "--teacher", student_name, "--kd-source", "public"]
        direct_settings += ["--kd-epochs", "1", "--quant-mode", "none", "--qat", "off"]
        direct_settings += ["--student-max-drop", "100"]  # only its teacher is measured
        direct = simulate(dataset, seed, direct_settings, direct_dir, log)
    teacher, student = run["teacher"]["accuracy"], run["student"]["accuracy"]
    extra: dict[str, Any] = {}
    if dataset == "fmnist":
        if "centralized" not in SKIP:
            extra["centralized_accuracy"] = centralized(kept)
            extra["centralized_flip_shift_accuracy"] = centralized(kept, "flip-shift")
        extra.update({"mcu_student_architecture": student_name})  # unless --mcu-student
        extra.update(mcu_of(kept, settings, run_dir, log))
    return {
        **extra,
        "dataset": dataset,
        "seed": seed,
        "teacher_accuracy": teacher,
        "student_accuracy": student,
        "accuracy_drop_pt": 100 * (teacher - student),
        "size_ratio": run["student"]["size_ratio"],
        "student_bytes": run["student"]["onnx_bytes"],
        "teacher_bytes": run["teacher"]["onnx_bytes"],
        "student_sha256": run["student"]["sha256"],
        "recipe": {
            "student": student_name,
            "quantized": run["student"]["quantized"],
            **{k: run["config"][k] for k in ("prune-ratio", "quant-mode", "kd-source", "qat")},
        },
        "compression_config": run["compression_config"],
        "quantization_reason": run["student"]["quantization_reason"],
        "stages": run["stages"],
        "choice": run.get("choice"),
        "train_bytes": run["communication"]["train_bytes"],
        "student_train_bytes": run["communication"].get("student_train_bytes", 0),
        "direct_student_accuracy": direct["teacher"]["accuracy"] if direct else None,
        "direct_train_bytes": direct["communication"]["train_bytes"] if direct else None,
        "kd_gain_pt": 100 * (student - direct["teacher"]["accuracy"]) if direct else None,
        "wall_s": run["wall_s"],
        "run": run_dir.name,  # where latency is re-measured (--latency-only)
        "teacher_run": kept.name,
        **latency(run_dir, teacher_onnx),
    }


def reproducibility(dataset: str, settings: list[str], work: Path, log: Path) -> dict[str, Any]:
    """Seed 0 again (a second process), and `fedge compress` of the first run's teacher."""
    first = json.loads((work / f"{dataset}-0" / "results.json").read_text())
    again = simulate(dataset, 0, settings, work / f"{dataset}-0-again", log)
    out = work / f"{dataset}-0-compress"
    fedge("compress", str(work / f"{dataset}-0"), "--out", str(out), log=log)
    compressed = json.loads((out / "results.json").read_text())
    sha = first["student"]["sha256"]
    return {
        "reproducible": again["student"]["sha256"] == sha,
        "compress_reproducible": compressed["student"]["sha256"] == sha,
        "student_sha256": [sha, again["student"]["sha256"], compressed["student"]["sha256"]],
    }


def leakage(dataset: str, seed: int, shadows: int, work: Path, log: Path) -> dict[str, Any]:
    out = work / f"{dataset}-{seed}-audit"
    fedge(
        "audit",
        str(work / f"{dataset}-{seed}"),
        "--shadows",
        str(shadows),
        "--out",
        str(out),
        log=log,
    )
    audit = json.loads((out / "audit.json").read_text())
    models = audit["models"]
    teacher, student = models["teacher"]["tpr_at_1pct_fpr"], models["student"]["tpr_at_1pct_fpr"]
    return {
        "student_tpr_ratio": student / teacher if teacher else None,
        "audit_seed": seed,
        "audit_shadows": shadows,
        "tpr_at_1pct_fpr": {name: row["tpr_at_1pct_fpr"] for name, row in models.items()},
        "audit_seconds": audit["seconds"],
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    drops = np.array([r["accuracy_drop_pt"] for r in rows])
    half = (
        stats.t.ppf(0.975, len(drops) - 1) * drops.std(ddof=1) / np.sqrt(len(drops))
        if len(drops) > 1
        else float("nan")
    )
    keys = [k for k in (*MEANS, *FMNIST_MEANS) if all(r.get(k) is not None for r in rows)]
    return {
        **{k: float(np.mean([r[k] for r in rows])) for k in keys},
        "spread": {
            k: [float(min(r[k] for r in rows)), float(max(r[k] for r in rows))] for k in keys
        },
        "accuracy_drop_pt_max": float(drops.max()),
        "accuracy_drop_pt_ci95": [float(drops.mean() - half), float(drops.mean() + half)],
        "size_ratio_min": float(min(r["size_ratio"] for r in rows)),
        "recipes": {r["seed"]: r["recipe"] for r in rows},
    }


def default_run(dataset: str, work: Path, log: Path) -> dict[str, Any]:
    """`fedge simulate --dataset DATASET` with every other setting its default: wall and memory."""
    out = work / f"{dataset}-default"
    cmd = [sys.executable, "-m", "fedge", "simulate", "--dataset", dataset, "--out", str(out)]
    measured = run_measured(cmd, log)
    results = json.loads((out / "results.json").read_text())
    return {
        "run_wall_s": measured["wall_s"],
        "peak_rss_gb": measured["peak_pss_gb"],  # PSS: shared pages counted once
        "peak_rss_sum_gb": measured["peak_rss_gb"],  # each process's RSS summed: an upper bound
        "default_run": {
            "teacher_accuracy": results["teacher"]["accuracy"],
            "student_accuracy": results["student"]["accuracy"],
            "student": results["student"]["architecture"],
            "timing_s": results["timing_s"],
        },
    }


def remeasure(path: Path, work: Path) -> None:
    """Speed-ups of every run in an earlier result (kept in `work`) again, and the means."""
    out = json.loads(path.read_text())
    for dataset, summary in out["datasets"].items():
        for row in summary["seeds"]:
            kept = work / row.get("teacher_run", f"{dataset}-{row['seed']}")
            run = work / row.get("run", kept.name)
            row.update(latency(run, kept / "teacher.onnx"))
        for key in (k for k in MEANS if k.startswith("speedup")):
            values = [r[key] for r in summary["seeds"]]
            summary[key] = float(np.mean(values))
            summary["spread"][key] = [float(min(values)), float(max(values))]
        print(
            f"{dataset}: "
            + ", ".join(f"{k} {summary[k]:.1f}" for k in MEANS if k.startswith("speedup"))
        )
    out["config"]["latency_remeasured"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out["config"]["latency_cpu"] = device_facts()["cpu"]  # speed-ups move with the CPU model
    path.write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a fedge setting for every run, e.g. --set kd-source=both")  # fmt: skip
    parser.add_argument("--audit-seed", type=int, default=0, help="-1: no audit")
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--work", type=Path, default=None, help="keep the runs here")
    parser.add_argument(
        "--no-reproducibility",
        action="store_true",
        help="skip seed 0's second run and its fedge compress (the byte-reproducibility check)",
    )
    parser.add_argument(
        "--latency-only",
        action="store_true",
        help="re-measure the speed-ups of the runs an earlier --json kept (its --work), on a "
        "quiet machine; accuracy and bytes are left as they are",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read the finished runs an interrupted benchmark kept in --work instead of running "
        "them again (the centralized reference, latency and the default run are measured anew)",
    )
    parser.add_argument(
        "--reuse-teachers",
        action="store_true",
        help="compress anew (fedge compress, this benchmark's settings) the teachers of the runs "
        "an earlier benchmark kept in --work, instead of training them again: for a change that "
        "moves compression only (say in the note how you checked the teachers are still what "
        "fedge simulate trains)",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated parts not to measure: direct (the student federated directly), "
        "default-run (fmnist's default fedge simulate), centralized (fmnist's reference)",
    )
    parser.add_argument(
        "--mcu-student",
        default=None,
        help="fmnist: the microcontroller student (a family name or arch: spec), distilled from "
        "each seed's teacher with the run's recipe; default: the shipped student",
    )
    args = parser.parse_args()
    REUSE["runs"] = args.reuse
    REUSE["teachers"] = args.reuse_teachers
    SKIP.update(part for part in args.skip.split(",") if part)
    if args.mcu_student:
        MCU["student"] = args.mcu_student
    if SKIP - {"direct", "default-run", "centralized"}:
        parser.error(f"--skip {args.skip!r}; allowed: direct, default-run, centralized")
    if args.reuse_teachers and args.work is None:
        parser.error("--reuse-teachers needs --work: the directory that kept the runs")
    if args.latency_only:
        if args.work is None:
            parser.error("--latency-only needs --work: the directory that kept the runs")
        remeasure(args.json, args.work)
        return
    settings = [
        part for item in args.set for part in (f"--{item.split('=', 1)[0]}", item.split("=", 1)[1])
    ]
    work = args.work or Path(tempfile.mkdtemp(prefix="fedge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "fedge.log"
    out: dict[str, Any] = {
        "config": {
            "settings": args.set,
            "seeds": args.seeds,
            "federation": "10 clients, Dirichlet alpha 0.5, defaults otherwise (fmnist: "
            "simulations/fmnist.toml)",
            "teachers": "reused: fedge compress of the kept runs' teachers"
            if args.reuse_teachers
            else "trained",
            "skipped": sorted(SKIP),
            "mcu_student": args.mcu_student or "shipped",
            "threads": 1,
            "machine": platform.platform(),
            "cpu": device_facts()["cpu"],  # the hosts differ: speed-ups move with the CPU model
            "work": work.name,  # the runs' directory (--work), by name: no machine's path
        },
        "datasets": {},
    }
    print(
        f"{'dataset':8} {'seed':>4} {'teacher':>8} {'student':>8} {'direct':>8} {'bytes':>7} {'ratio':>6} {'drop':>6}"
    )
    for dataset in args.datasets.split(","):
        rows = []
        for seed in range(args.seeds):
            row = one_seed(dataset, seed, settings, work, log)
            rows.append(row)
            direct = row["direct_student_accuracy"]
            print(
                f"{dataset:8} {seed:4d} {100 * row['teacher_accuracy']:7.2f}% "
                f"{100 * row['student_accuracy']:7.2f}% "
                + (f"{100 * direct:7.2f}% " if direct is not None else "      - ")
                + f"{row['student_bytes']:7d} {row['size_ratio']:6.1f} {row['accuracy_drop_pt']:6.2f}",
                flush=True,
            )
        reproduced = (
            {}
            if args.no_reproducibility
            else reproducibility(
                dataset, [*DATASET_SETTINGS.get(dataset, []), *settings], work, log
            )
        )
        summary = {**summarize(rows), **reproduced}
        if dataset == "fmnist" and "default-run" not in SKIP:  # the 10-minute, 4 GB goal
            summary.update(default_run(dataset, work, log))
        if args.audit_seed >= 0:
            summary.update(leakage(dataset, args.audit_seed, args.shadows, work, log))
        out["datasets"][dataset] = {**summary, "seeds": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")  # after every dataset
    for dataset, s in out["datasets"].items():
        print(
            f"{dataset}: size_ratio {s['size_ratio']:.1f} (min {s['size_ratio_min']:.1f}), "
            f"accuracy_drop_pt {s['accuracy_drop_pt']:.2f} (worst {s['accuracy_drop_pt_max']:.2f}, "
            f"ci95 {s['accuracy_drop_pt_ci95'][0]:.2f}..{s['accuracy_drop_pt_ci95'][1]:.2f}), "
            f"kd_gain_pt {s.get('kd_gain_pt')}, reproducible {s.get('reproducible')}/"
            f"{s.get('compress_reproducible')}, student_tpr_ratio {s.get('student_tpr_ratio')}"
        )


if __name__ == "__main__":
    main()
