"""Scale and communication: many clients on one box, and training bytes to reach an accuracy.

    python benchmarks/scale.py --json OUT.json [--seeds 3] [--skip-clients] [--skip-bytes]

Every figure comes from real `fedge simulate` runs (Flower's simulation engine, Ray), each in
its own process session:

- clients: mnist1d generated at `--dataset-size` samples, `--clients` clients, Dirichlet 0.5,
  `--fraction-train` of them sampled per round, `--rounds` rounds, the default compression
  recipe and deployment to every client. Wall time, and the peak resident memory of the whole
  process tree (fedge, Ray's processes and workers; read from /proc every 0.5 s, summed). Then
  benchmarks/bare_flower.py, Flower's FedAvg with the same local training for as many sampled
  clients: `overhead_ratio_vs_flower` is fedge's mean round time over the bare app's (rounds
  2 and later, each round with its central test evaluation).
- bytes: digits, Dirichlet 0.5, 10 clients, per seed: fp32 updates and int8 both ways for
  `--bytes-rounds`; top-k (`--topk-ratio`) + int8 both ways (updates up, the model's change
  down: `downlink-compression delta`) for `--topk-rounds`; and few rounds (`--few-rounds`)
  with the ensemble teacher. Training bytes are the serialized Flower messages of the teacher's
  rounds, both ways (results.json rounds[].uplink_bytes / downlink_bytes). The target is the
  fp32 run's final teacher accuracy minus one point; `bytes_X` is the cumulative training
  traffic at the first round where variant X reached it (null if it never did). A PNG plots
  accuracy against cumulative bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from measure import run_measured

from fedge.pipeline.rundir.paths import RESULTS_FILE

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "int8": {"update-compression": "int8", "downlink-compression": "int8"},
    "topk": {"update-compression": "topk+int8", "downlink-compression": "delta"},
    "fewround": {"teacher-mode": "ensemble"},
}


def run(settings: dict[str, Any], out: Path, log: Path) -> dict[str, Any]:
    """One `fedge simulate` to the end: its results, wall seconds and peak tree RSS."""
    pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
    cmd = [sys.executable, "-m", "fedge", "simulate", "--run-config", pairs, "--out", str(out)]
    measured = run_measured(cmd, log, ok=(0, 3))  # 3: finished, the quality gate shipped nothing
    return {"results": json.loads((out / RESULTS_FILE).read_text()), **measured}


def measure_clients(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The many-clients run."""
    settings = {
        "dataset": "mnist1d",
        "dataset-size": args.dataset_size,
        "clients": args.clients,
        "partition": "dirichlet",
        "alpha": 0.5,
        "fraction-train": args.fraction_train,
        "rounds": args.rounds,
        "seed": 0,
    }
    got = run(settings, work / "clients", work / "clients.log")
    results = got["results"]
    bare = bare_flower(settings, work)
    fedge_rounds = _round_seconds([r["elapsed_s"] for r in results["rounds"]])
    bare_rounds = _round_seconds(bare["round_end_s"])
    return {
        "overhead_ratio_vs_flower": statistics.mean(fedge_rounds) / statistics.mean(bare_rounds),
        "round_s_fedge": fedge_rounds,
        "round_s_bare_flower": bare_rounds,
        "bare_flower_accuracy": bare["accuracy"],
        "settings": settings,
        f"clients_{args.clients}_wall_s": got["wall_s"],
        f"clients_{args.clients}_peak_rss_gb": got["peak_rss_gb"],
        "round_seconds": [r["seconds"] for r in results["rounds"]],
        "timing_s": results["timing_s"],
        "teacher_accuracy": results["teacher"]["accuracy"],
        "student_accuracy": (results["student"] or {}).get("accuracy"),
        "installed": sum(c["installed"] for c in results["clients"]),
        "train_bytes": results["communication"]["train_bytes"],
    }


def _round_seconds(ends: list[float]) -> list[float]:
    """Each round's duration from end times, without round 1 (actor start-up, first imports)."""
    return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def bare_flower(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """The same federation through benchmarks/bare_flower.py, in its own process."""
    pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in settings.items())
    out = work / "bare.json"
    script = Path(__file__).with_name("bare_flower.py")
    with (work / "bare.log").open("ab") as log:
        subprocess.run(
            [sys.executable, str(script), "--json", str(out), "--run-config", pairs],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            start_new_session=True,
        )
    return dict(json.loads(out.read_text()))


def curve(results: dict[str, Any]) -> list[tuple[int, float]]:
    """(cumulative training bytes, central accuracy) after each teacher round."""
    total, points = 0, []
    for row in results["rounds"]:
        total += row["uplink_bytes"] + row["downlink_bytes"]
        points.append((total, row["accuracy"]))
    return points


def bytes_to(points: list[tuple[int, float]], target: float) -> int | None:
    """Cumulative bytes at the first round reaching `target`."""
    return next((b for b, acc in points if acc >= target), None)


def measure_bytes(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every variant on every seed; bytes to the fp32 run's final accuracy minus one point."""
    per_seed = []
    for seed in range(args.seeds):
        rows: dict[str, Any] = {}
        for name, extra in VARIANTS.items():
            rounds = {"fewround": args.few_rounds, "topk": args.topk_rounds}.get(
                name, args.bytes_rounds
            )
            settings = {"dataset": "digits", "seed": seed, "rounds": rounds, **extra}
            topk = {"topk-ratio": args.topk_ratio} if name == "topk" else {}
            got = run({**settings, **topk}, work / f"{name}-{seed}", work / f"{name}-{seed}.log")
            res = got["results"]
            rows[name] = {
                "rounds": rounds,
                "curve": curve(res),
                "teacher_accuracy": res["teacher"]["accuracy"],
                "student_accuracy": (res["student"] or {}).get("accuracy"),
                "train_bytes": sum(b for b, _ in curve(res)[-1:]),
            }
            print(f"seed {seed} {name}: {rows[name]['teacher_accuracy']:.4f}", flush=True)
        target = rows["fp32"]["teacher_accuracy"] - 0.01
        for row in rows.values():
            row["bytes_to_target"] = bytes_to(row["curve"], target)
        per_seed.append({"seed": seed, "target_accuracy": target, "variants": rows})
    return {"per_seed": per_seed, **summarize(per_seed)}


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over seeds: bytes to target, final accuracies, ratios against fp32."""
    out: dict[str, Any] = {}
    for name in VARIANTS:
        rows = [s["variants"][name] for s in per_seed]
        reached = [r["bytes_to_target"] for r in rows if r["bytes_to_target"] is not None]
        out[f"bytes_{name}"] = statistics.mean(reached) if len(reached) == len(rows) else None
        out[f"bytes_{name}_reached"] = f"{len(reached)}/{len(rows)}"
        out[f"teacher_accuracy_{name}"] = statistics.mean(r["teacher_accuracy"] for r in rows)
        students = [r["student_accuracy"] for r in rows if r["student_accuracy"] is not None]
        out[f"student_accuracy_{name}"] = statistics.mean(students) if students else None
        out[f"train_bytes_{name}"] = statistics.mean(r["train_bytes"] for r in rows)
    for name in ("int8", "topk", "fewround"):
        out[f"bytes_ratio_{name}"] = out["train_bytes_fp32"] / out[f"train_bytes_{name}"]
        out[f"accuracy_loss_pt_{name}"] = 100 * (
            out["teacher_accuracy_fp32"] - out[f"teacher_accuracy_{name}"]
        )
        pairs = [(s["variants"][name]["curve"], s["variants"]["fp32"]["curve"]) for s in per_seed]
        if all(len(mine) > len(fp32) for mine, fp32 in pairs):  # ran longer: also at fp32's end
            at = len(pairs[0][1])
            out[f"teacher_accuracy_{name}_at_round_{at}"] = statistics.mean(
                mine[at - 1][1] for mine, _ in pairs
            )
        if out["bytes_fp32"] and out[f"bytes_{name}"]:
            out[f"bytes_to_target_ratio_{name}"] = out["bytes_fp32"] / out[f"bytes_{name}"]
    return out


def plot(per_seed: list[dict[str, Any]], path: Path) -> None:
    """Accuracy against cumulative training bytes, every variant, every seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, name in enumerate(VARIANTS):
        for j, seed in enumerate(per_seed):
            points = seed["variants"][name]["curve"]
            ax.plot(
                [b / 1e6 for b, _ in points],
                [100 * a for _, a in points],
                marker="o",
                markersize=3,
                color=f"C{i}",
                alpha=0.8,
                label=name if j == 0 else None,
            )
    ax.set_xscale("log")
    ax.set_xlabel("cumulative training traffic, both ways (MB, log)")
    ax.set_ylabel("teacher accuracy, central test (%)")
    ax.set_title("digits, 10 clients, Dirichlet 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--dataset-size", type=int, default=100_000)
    parser.add_argument("--fraction-train", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bytes-rounds", type=int, default=10)
    parser.add_argument("--few-rounds", type=int, default=3)
    parser.add_argument("--topk-rounds", type=int, default=20)
    parser.add_argument("--topk-ratio", type=float, default=0.05)
    parser.add_argument("--skip-clients", action="store_true")
    parser.add_argument("--skip-bytes", action="store_true")
    args = parser.parse_args()
    result: dict[str, Any] = {"args": vars(args) | {"json": args.json.name}}
    with tempfile.TemporaryDirectory(prefix="fedge-scale-") as tmp:
        work = Path(tmp)
        if not args.skip_clients:
            result["clients"] = measure_clients(work, args)
            print(json.dumps(result["clients"], indent=1), flush=True)
        if not args.skip_bytes:
            result["bytes"] = measure_bytes(work, args)
            plot(result["bytes"]["per_seed"], args.json.with_suffix(".png"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
