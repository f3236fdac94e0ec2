"""Device-aware student search against the hand-written student family, per dataset and seed.

    python benchmarks/search.py --json OUT.json [--datasets digits,mnist1d] [--seeds 3]
        [--trials 30] [--speedup 1.5] [--time-budget S] [--runs DIR] [--jobs 2] [--work DIR]
        [--students ds-small,small,...]

Per dataset and seed, all real processes and files:
1. `fedge simulate` trains the teacher (its own compression is cut short: kd-epochs 5), or
   with --runs the kept run DIR/<dataset>-<seed> (fmnist: benchmarks/compression.py's runs,
   `simulations/fmnist.toml`) gives it.
2. `fedge compress RUN --student S --kd-source public --kd-epochs 100` (the default recipe; on
   fmnist its scenario's, weight-only int8) for every hand-written student S,
   --jobs of them at a time (one torch thread each; the latency each compress measures of its
   own student is not used: step 5 times every model again, alone).
   The most accurate of them is compressed once more without int8 (`--quant-mode none`): the
   search may ship fp32, and so may a person.
3. `fedge profile` once, on this machine, at the start; the search targets that profile.
4. `fedge compress RUN --search --device-profile P --max-latency-us B`, where B is the latency
   (on the profile) of the most accurate hand-written student divided by `--speedup` (default
   1: the most accurate architecture no slower than the best hand-written one). If nothing
   meets B, the search runs again without a budget (recorded as `budget_met: false`).
5. Every shipped model (searched and hand-written) timed side by side in this process, batch 1,
   on a raw test input: 10 rotations of 200 consecutive calls each (2,000 per model), so each
   model runs with its own code and data in the caches, as on a device, and drift hits all.

The comparison: the fastest hand-written student within 0.3 validation points of the searched
one (`hand_*`), and the searched student (`searched_*`); `speedup` is their measured latency
ratio. If no hand-written student is within 0.3 points, `accuracy_gain_pt` against the most
accurate hand-written student at equal or higher latency. The predictor's quality over every
trial (predicted on the profile vs measured during the search): Spearman rank correlation and
median relative error. `vs_fp32_too_*` repeats the comparison with the fp32 hand-written
student among the family.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
from scipy.stats import spearmanr

from fedge.compression.latency import LatencyModel, fit
from fedge.core.choices import STUDENTS
from fedge.core.config import SETTINGS, RunConfig
from fedge.core.ort import blocked_latency_us, make_session, session_call
from fedge.core.partition import build_federation
from fedge.core.profile import load_profile
from fedge.simulations.runner import load_scenario

WITHIN_PT = 0.3
RECIPE = ("--kd-epochs", "100")  # the run's own compression was cut short; this is the default
SCENARIOS = {"fmnist": Path(__file__).resolve().parent.parent / "simulations" / "fmnist.toml"}


def dataset_recipe(dataset: str) -> tuple[str, ...]:
    """The dataset's scenario's compression settings as flags, but its student (searched)."""
    if dataset not in SCENARIOS:
        return ()
    scenario = load_scenario(SCENARIOS[dataset]).items()
    keys = [(k, v) for k, v in scenario if SETTINGS[k].compress and k != "student"]
    return tuple(part for k, v in keys for part in (f"--{k}", str(v)))


def fedge(*args: str, log: Path, threads: int | None = None) -> float:
    """Run the fedge CLI to the end; its wall seconds."""
    return wait(start_fedge(*args, log=log, threads=threads))


class Started(NamedTuple):
    """A fedge process `start_fedge` started, for `wait`."""

    proc: subprocess.Popen[bytes]
    sink: IO[bytes]  # its log, open
    args: tuple[str, ...]
    log: Path
    start: float


def start_fedge(*args: str, log: Path, threads: int | None = None) -> Started:
    """The fedge CLI started (`threads`: torch's threads), for `wait`."""
    env = dict(os.environ) | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    sink = log.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedge", *args], stdout=sink, stderr=subprocess.STDOUT, env=env
    )
    return Started(proc, sink, args, log, time.monotonic())


def wait(started: Started) -> float:
    """Wait for a `start_fedge` process; its wall seconds, RuntimeError if it failed."""
    code = started.proc.wait()
    started.sink.close()
    if code != 0:
        raise RuntimeError(f"fedge {' '.join(started.args)} failed ({code}); see {started.log}")
    return float(time.monotonic() - started.start)


def one(
    dataset: str, seed: int, work: Path, args: argparse.Namespace, profile: Path
) -> dict[str, Any]:
    """Teacher, hand-written students, search, side-by-side timing for one dataset and seed."""
    run = work / f"{dataset}-{seed}"
    log = work / f"{dataset}-{seed}.log"
    recipe = (*dataset_recipe(dataset), *RECIPE)
    if args.runs:
        run = args.runs / f"{dataset}-{seed}"  # a kept run: its teacher, not trained again
        if not (run / "teacher.onnx").is_file():
            raise SystemExit(f"--runs: {run} holds no teacher.onnx (a finished fedge run)")
    elif not (run / "teacher.onnx").is_file():  # --work: a teacher trained before is kept
        config = f'dataset="{dataset}" seed={seed} kd-epochs=5'
        fedge("simulate", "--run-config", config, "--out", str(run), log=log)
    out_dir = work / f"{dataset}-{seed}-students"
    hands = {student: out_dir / "hand" / student for student in args.students}
    compress_family(run, hands, recipe, args.jobs, log)
    model = fit(load_profile(profile))
    rows = {name: _row(out, model) for name, out in hands.items()}
    best = max(rows.values(), key=lambda r: (r["val_accuracy"], -r["predicted_b1_us"]))
    budget = best["predicted_b1_us"] / args.speedup
    # The search may ship fp32; so may a person: the best hand-written student without int8.
    fp32 = out_dir / "hand" / f"{best['student']}-fp32"
    hand_args = ("--student", best["student"], "--kd-source", "public", *recipe)
    if not (fp32 / "results.json").is_file():
        fedge("compress", str(run), *hand_args, "--quant-mode", "none", "--out", str(fp32), log=log)
    hands[f"{best['student']} fp32"] = fp32
    rows[f"{best['student']} fp32"] = _row(fp32, model)
    searched = out_dir / "searched"
    search = ["compress", str(run), "--search", "--device-profile", str(profile), *recipe]
    search += ["--trials", str(args.trials), "--out", str(searched)]
    search += ["--time-budget", str(args.time_budget)] if args.time_budget else []
    meta = out_dir / "search.json"  # how the search went, for a second run with --work
    command = [*search, "--max-latency-us", f"{budget:.3f}"]
    if not meta.is_file():
        budget_met = True
        try:
            search_s = fedge(*command, log=log)
        except RuntimeError:  # exit 2: nothing met the budget; the unconstrained front instead
            budget_met = False
            search_s = fedge(*search, log=log)
        meta.write_text(
            json.dumps({"command": command, "budget_met": budget_met, "seconds": search_s})
        )
    kept = json.loads(meta.read_text())
    if kept.get("command") != command:
        raise SystemExit(f"--work: {meta} is another search's ({kept.get('command')}); remove it")
    budget_met, search_s = kept["budget_met"], kept["seconds"]
    rows["searched"] = _row(searched, model)
    trials = json.loads((searched / "search" / "trials.json").read_text())["rows"]
    measured = _side_by_side({**hands, "searched": searched}, dataset, seed)
    for name, row in rows.items():
        row["b1_us"] = measured[name]
    return {
        "dataset": dataset,
        "seed": seed,
        "budget_us": budget,
        "budget_met": budget_met,
        "best_hand": best["student"],
        "search_seconds": search_s,
        "trials": trials,
        "students": rows,
        **compare(rows),
        **compare(rows, prefix="vs_fp32_too_"),
    }


def compress_family(
    run: Path, hands: dict[str, Path], recipe: tuple[str, ...], jobs: int, log: Path
) -> None:
    """`fedge compress` of every hand-written student not yet done, `jobs` at a time.

    If one fails, the others of its batch are stopped and waited for before the error rises.
    """
    todo = [(s, out) for s, out in hands.items() if not (out / "results.json").is_file()]
    for first in range(0, len(todo), jobs):
        started: list[Started] = []
        try:
            for student, out in todo[first : first + jobs]:
                args = ("compress", str(run), "--student", student, "--kd-source", "public")
                started.append(
                    start_fedge(
                        *args,
                        *recipe,
                        "--out",
                        str(out),
                        log=log.with_suffix(f".{student}.log"),
                        threads=1 if jobs > 1 else None,
                    )  # fmt: skip
                )
            for one_started in started:
                wait(one_started)
        finally:
            for one_started in started:
                if one_started.proc.poll() is None:
                    one_started.proc.terminate()
                    one_started.proc.wait()
                one_started.sink.close()


def _row(out: Path, model: LatencyModel) -> dict[str, Any]:
    """What a compress output says of its shipped student, and its latency on the profile."""
    results = json.loads((out / "results.json").read_text())
    student = results["student"]
    return {
        "student": student["architecture"],
        "quant": results["choice"]["chosen"]["quant"],
        "val_accuracy": results["choice"]["chosen"]["val_accuracy"],
        "test_accuracy": student["accuracy"],
        "bytes": student["onnx_bytes"],
        "predicted_b1_us": model.predict_us((out / "bundle" / "model.onnx").read_bytes()),
    }


def _side_by_side(outs: dict[str, Path], dataset: str, seed: int) -> dict[str, float]:
    """Batch-1 p50 of every shipped model, interleaved, on a raw test sample."""
    fed = build_federation(RunConfig(dataset=dataset, seed=seed))
    raw = fed.dataset.preprocessing.invert(fed.server.test.x[:1])
    calls = {
        name: session_call(make_session((out / "bundle" / "model.onnx").read_bytes()), raw)
        for name, out in outs.items()
    }
    timing = blocked_latency_us(calls, blocks=10, per_block=200)
    return {name: timing[name]["p50"] for name in outs}


def compare(rows: dict[str, dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    """The searched student against the hand-written family (see the module docstring).

    The family as it ships (the run's int8), unless `prefix`: then also the best hand-written
    student in fp32, and every key starts with `prefix`.
    """
    searched = rows["searched"]
    hands = [r for n, r in rows.items() if n != "searched" and (prefix or r["quant"] != "fp32")]
    close = [
        h for h in hands if abs(h["val_accuracy"] - searched["val_accuracy"]) * 100 <= WITHIN_PT
    ]
    out: dict[str, Any] = {
        "searched_student": searched["student"],
        "searched_quant": searched["quant"],
        "searched_accuracy": searched["val_accuracy"],
        "searched_test_accuracy": searched["test_accuracy"],
        "searched_latency_us": searched["b1_us"],
        "searched_bytes": searched["bytes"],
    }
    if close:
        hand = min(close, key=lambda h: h["b1_us"])
        out["comparison"] = f"fastest hand-written within {WITHIN_PT} validation points"
    else:
        slower = [h for h in hands if h["b1_us"] >= searched["b1_us"]] or hands
        hand = max(slower, key=lambda h: h["val_accuracy"])
        out["comparison"] = "most accurate hand-written at equal or higher latency"
    out |= {
        "hand_student": hand["student"],
        "hand_quant": hand["quant"],
        "hand_accuracy": hand["val_accuracy"],
        "hand_test_accuracy": hand["test_accuracy"],
        "hand_latency_us": hand["b1_us"],
        "hand_bytes": hand["bytes"],
        "speedup": hand["b1_us"] / searched["b1_us"],
        "accuracy_gain_pt": 100 * (searched["val_accuracy"] - hand["val_accuracy"]),
    }
    out["met"] = bool(
        (close and out["speedup"] >= 1.5)
        or (out["accuracy_gain_pt"] >= 0.5 and searched["b1_us"] <= hand["b1_us"])
    )
    return {f"{prefix}{k}": v for k, v in out.items()}


def predictor_quality(trials: list[dict[str, Any]]) -> dict[str, float]:
    """Rank correlation and median relative error of predicted vs measured trial latency."""
    predicted = np.array([t["predicted_b1_us"] for t in trials])
    measured = np.array([t["measured_b1_us"] for t in trials])
    return {
        "spearman": float(spearmanr(predicted, measured)[0]),
        "median_rel_error": float(np.median(np.abs(predicted / measured - 1))),
        "n": len(trials),
    }


def summarize(per_run: list[dict[str, Any]], datasets: list[str]) -> dict[str, Any]:
    """Means (and spreads) over seeds per dataset."""
    out: dict[str, Any] = {}
    for dataset in datasets:
        runs = [r for r in per_run if r["dataset"] == dataset]
        entry: dict[str, Any] = {}
        for key in (
            "searched_latency_us",
            "hand_latency_us",
            "searched_accuracy",
            "hand_accuracy",
            "searched_test_accuracy",
            "hand_test_accuracy",
            "speedup",
            "accuracy_gain_pt",
            "search_seconds",
        ):
            values = [r[key] for r in runs]
            entry[key] = statistics.mean(values)
            entry[f"{key}_spread"] = [min(values), max(values)]
        entry["met"] = f"{sum(r['met'] for r in runs)}/{len(runs)}"
        entry["vs_fp32_too_speedup"] = statistics.mean(r["vs_fp32_too_speedup"] for r in runs)
        entry["vs_fp32_too_met"] = f"{sum(r['vs_fp32_too_met'] for r in runs)}/{len(runs)}"
        entry["searched_quant"] = [r["searched_quant"] for r in runs]
        entry["predictor"] = predictor_quality([t for r in runs for t in r["trials"]])
        out[dataset] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--datasets", default="digits,mnist1d")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--speedup", type=float, default=1.0)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="fedge compress --time-budget of each search (default: fedge's)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the outputs here; a second run reuses what is finished")  # fmt: skip
    parser.add_argument("--runs", type=Path, default=None,
                        help="kept runs DIR/<dataset>-<seed> whose teachers to reuse")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1,
                        help="hand-written students compressed at a time (one thread each)")  # fmt: skip
    parser.add_argument("--students", default=",".join(STUDENTS),
                        help="the hand-written family, comma-separated (default: all)")  # fmt: skip
    args = parser.parse_args()
    args.students = [name.strip() for name in args.students.split(",") if name.strip()]
    if args.time_budget is not None and not args.time_budget > 0:
        parser.error(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if unknown := set(args.students) - set(STUDENTS):
        parser.error(f"--students: unknown {sorted(unknown)}; allowed: {', '.join(STUDENTS)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    datasets = args.datasets.split(",")
    with tempfile.TemporaryDirectory(prefix="fedge-search-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        profile = work / "profile.json"
        if not profile.is_file():
            fedge("profile", "--out", str(profile), "--iters", "1000", log=work / "profile.log")
        per_run = []
        for dataset in datasets:
            for seed in range(args.seeds):
                per_run.append(one(dataset, seed, work, args, profile))
                row = per_run[-1]
                print(
                    f"{dataset} seed {seed}: searched {row['searched_student']} "
                    f"{100 * row['searched_accuracy']:.2f} % {row['searched_latency_us']:.1f} µs vs "
                    f"{row['hand_student']} {100 * row['hand_accuracy']:.2f} % "
                    f"{row['hand_latency_us']:.1f} µs: {row['speedup']:.2f}x, "
                    f"search {row['search_seconds']:.0f} s",
                    flush=True,
                )
        device = json.loads(profile.read_text())["device"]
    result = {
        "args": vars(args)
        | {
            "json": args.json.name,
            "runs": args.runs and args.runs.name,
            "work": args.work and args.work.name,
        },
        "device": device,
        "summary": summarize(per_run, datasets),
        "per_run": per_run,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
