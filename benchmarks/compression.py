"""The federated pipeline's student against its teacher and against federating the student directly.

    python benchmarks/compression.py --json OUT.json [--datasets digits,mnist1d] [--seeds 5]
        [--set KEY=VALUE ...] [--audit-seed 0] [--shadows 16] [--work DIR]

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
  multiple of the teacher's.
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
import torch
from measure import run_measured
from scipy import stats

from fedge.core.augment import teacher_view
from fedge.core.config import RunConfig
from fedge.core.models import build_teacher
from fedge.core.ort import interleaved_latency_us, make_session, session_call
from fedge.core.partition import build_federation, client_data
from fedge.core.training import epochs_of_batches, evaluate

# The fmnist federation: more rounds than the default run's 10 (FedAvg on Dirichlet 0.5 was at
# 86 % after 10 rounds, 89 % after 30), the separable student first among the candidates (the
# microcontroller-sized one: its row says what it reaches even when another ships).
MCU_STUDENT = "ds-small"
DATASET_SETTINGS = {
    "fmnist": ["--rounds", "40", "--auto-students", f"{MCU_STUDENT},deep-small,deep-medium"],
}
FMNIST_MEANS = ("centralized_accuracy", "mcu_student_accuracy", "mcu_student_bytes")
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


REUSE = {"runs": False}  # --reuse: a finished run kept in --work is read, not run again


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


def latency(run: Path) -> dict[str, float]:
    """Teacher in torch eager and onnxruntime vs the shipped student, interleaved, one thread."""
    cfg = RunConfig.from_run_config(json.loads((run / "results.json").read_text())["config"])
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    torch.set_num_threads(1)
    # Latency does not depend on the weights' values: an untrained teacher of the same shape.
    teacher = build_teacher(prep.input_shape, fed.dataset.num_classes, cfg.seed, cfg.teacher).eval()
    teacher_ort = make_session((run / "teacher.onnx").read_bytes())
    student = make_session((run / "bundle" / "model.onnx").read_bytes())
    x = fed.server.test.x
    figures = {}
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


def centralized(run: Path) -> dict[str, Any]:
    """The teacher's architecture trained in one process on every client's training data.

    As many samples as the federated teacher's clients trained in all, with their optimizer
    (SGD, momentum 0.9, the run's lr and batch size) and augmentation, and a cosine-decayed
    learning rate (how a model is trained centrally): what federation costs, side by side.
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
    view = teacher_view(cfg.augment)  # the clients' augmentation
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
    return {
        "centralized_accuracy": evaluate(model, fed.server.test.x, fed.server.test.y)[1],
        "centralized_samples": samples,
        "centralized_seconds": time.monotonic() - start,
    }


def candidate(run: dict[str, Any], student: str) -> dict[str, Any] | None:
    """A candidate's row in the run's choice (its test accuracy and bytes), if it was tried."""
    rows = (run.get("choice") or {}).get("candidates", [])
    return next((row for row in rows if row["student"] == student), None)


def one_seed(dataset: str, seed: int, settings: list[str], work: Path, log: Path) -> dict[str, Any]:
    settings = [*DATASET_SETTINGS.get(dataset, []), *settings]
    run = simulate(dataset, seed, settings, work / f"{dataset}-{seed}", log)
    student_name = run["student"]["architecture"]
    direct_settings = [*settings, "--teacher", student_name, "--kd-source", "public"]
    direct_settings += ["--kd-epochs", "1", "--quant-mode", "none", "--qat", "off"]
    direct_settings += ["--student-max-drop", "100"]  # only its teacher is measured
    direct = simulate(dataset, seed, direct_settings, work / f"{dataset}-{seed}-direct", log)
    teacher, student = run["teacher"]["accuracy"], run["student"]["accuracy"]
    extra: dict[str, Any] = {}
    if dataset == "fmnist":
        extra.update(centralized(work / f"{dataset}-{seed}"))
        mcu = candidate(run, MCU_STUDENT)
        extra["mcu_student"] = MCU_STUDENT
        extra["mcu_student_accuracy"] = mcu["test_accuracy"] if mcu else None
        extra["mcu_student_bytes"] = mcu["bytes"] if mcu else None
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
        "direct_student_accuracy": direct["teacher"]["accuracy"],
        "direct_train_bytes": direct["communication"]["train_bytes"],
        "kd_gain_pt": 100 * (student - direct["teacher"]["accuracy"]),
        "wall_s": run["wall_s"],
        **latency(work / f"{dataset}-{seed}"),
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
            row.update(latency(work / f"{dataset}-{row['seed']}"))
        for key in (k for k in MEANS if k.startswith("speedup")):
            summary[key] = float(np.mean([r[key] for r in summary["seeds"]]))
        print(
            f"{dataset}: "
            + ", ".join(f"{k} {summary[k]:.1f}" for k in MEANS if k.startswith("speedup"))
        )
    out["config"]["latency_remeasured"] = time.strftime("%Y-%m-%d %H:%M:%S")
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
    args = parser.parse_args()
    REUSE["runs"] = args.reuse
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
            "federation": "10 clients, Dirichlet alpha 0.5, defaults otherwise",
            "threads": 1,
            "machine": platform.platform(),
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
            print(
                f"{dataset:8} {seed:4d} {100 * row['teacher_accuracy']:7.2f}% "
                f"{100 * row['student_accuracy']:7.2f}% {100 * row['direct_student_accuracy']:7.2f}% "
                f"{row['student_bytes']:7d} {row['size_ratio']:6.1f} {row['accuracy_drop_pt']:6.2f}",
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
        if dataset == "fmnist":  # the 10-minute, 4 GB goal of a default run, on its own
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
            f"kd_gain_pt {s['kd_gain_pt']:.2f}, reproducible {s.get('reproducible')}/"
            f"{s.get('compress_reproducible')}, student_tpr_ratio {s.get('student_tpr_ratio')}"
        )


if __name__ == "__main__":
    main()
