"""Robustness: Byzantine clients against each aggregation rule, drop-outs, and kill/resume.

    python benchmarks/robustness.py --json OUT.json [--rounds 10] [--clients 10] [--trials 5]

Every figure comes from real `fedge simulate` runs (Flower's simulation engine, Ray) on IID
digits with the same seed, each in its own process: a clean run; 20 % sign-flip clients under
fedavg, median, trimmed-mean, krum and multi-krum; 20 % Gaussian-noise clients under fedavg
(the norm rule rejects them); 50 % of clients dropping out of every round. Accuracy is the
teacher's on the central test split. Then `--trials` times: start the clean configuration,
SIGKILL its whole process tree at a random moment, resume it with `fedge simulate --resume`,
and compare `final_model_sha256` with the uninterrupted clean run.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedge.simulations.crash import kill_when, start_simulate

ATTACKS: dict[str, dict[str, Any]] = {
    "signflip_fedavg": {"byzantine-fraction": 0.2, "aggregation": "fedavg"},
    "signflip_median": {"byzantine-fraction": 0.2, "aggregation": "median"},
    "signflip_trimmed_mean": {"byzantine-fraction": 0.2, "aggregation": "trimmed-mean"},
    "signflip_krum": {"byzantine-fraction": 0.2, "aggregation": "krum", "num-malicious": 2},
    "signflip_multi_krum": {
        "byzantine-fraction": 0.2,
        "aggregation": "multi-krum",
        "num-malicious": 2,
    },
    "gaussian_fedavg": {"byzantine-fraction": 0.2, "byzantine-mode": "gaussian"},
    "dropout50": {"dropout-fraction": 0.5},
}


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The clean run: IID digits; a light compression phase (this measures training)."""
    return {
        "dataset": "digits",
        "clients": args.clients,
        "rounds": args.rounds,
        "partition": "iid",
        "local-epochs": args.local_epochs,
        "seed": args.seed,
        "student": "tiny",
        "kd-epochs": 2,
        "prune-ratio": 0.0,
        "finetune-epochs": 0,
    }


def scenario(path: Path, settings: dict[str, Any]) -> Path:
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def simulate(work: Path, name: str, settings: dict[str, Any]) -> dict[str, Any]:
    out = work / name
    file = scenario(work / f"{name}.toml", settings)
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "fedge", "simulate", "--scenario", str(file), "--out", str(out)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=(work / f"{name}.log").open("wb"),
    )
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    results["wall_s"] = time.monotonic() - start
    return results


def resume_trial(work: Path, index: int, settings: dict[str, Any], at: float) -> dict[str, Any]:
    """Kill the clean configuration `at` seconds in, resume it, return what happened."""
    out = work / f"resume-{index}"
    file = scenario(work / f"resume-{index}.toml", settings)
    log = work / f"resume-{index}.log"
    start = time.monotonic()
    proc = start_simulate(["--scenario", str(file), "--out", str(out)], log)
    killed = kill_when(proc, lambda: time.monotonic() - start >= at, timeout=at + 600)
    partial = out.with_name(out.name + ".partial")
    checkpoints = sorted(p.name for p in (partial / "checkpoints").glob("round-*.json"))
    if (out / "results.json").is_file():
        how = "finished before the kill"
    elif (partial / "run-config.json").is_file():
        how = "resumed"
        with log.open("ab") as handle:
            subprocess.run(
                [sys.executable, "-m", "fedge", "simulate", "--resume", str(out)],
                check=True,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
    else:  # killed before the run wrote anything: nothing was completed, start again
        how = "restarted (killed before the run directory existed)"
        shutil.rmtree(partial, ignore_errors=True)
        with log.open("ab") as handle:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fedge",
                    "simulate",
                    "--scenario",
                    str(file),
                    "--out",
                    str(out),
                ],
                check=True,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
    results = json.loads((out / "results.json").read_text())
    return {
        "kill_at_s": round(at, 2),
        "killed": killed,
        "checkpoints_at_kill": checkpoints,
        "how": how,
        "resumed_from": results["resumed_from"],
        "rounds_recorded": [r["round"] for r in results["rounds"]],
        "final_model_sha256": results["final_model_sha256"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args()
    base = base_config(args)
    with tempfile.TemporaryDirectory(prefix="fedge-robustness-") as tmp:
        work = Path(tmp)
        clean = simulate(work, "clean", base)
        clean_acc = clean["teacher"]["accuracy"]
        out: dict[str, Any] = {
            "config": {**base, "byzantine-mode": "sign-flip", "byzantine-scale": 5.0},
            "clean_accuracy": clean_acc,
            "clean_wall_s": clean["wall_s"],
            "runs": {},
        }
        print(f"{'run':24} {'accuracy':>9} {'drop (pt)':>10} {'rejected':>9}")
        print(f"{'clean':24} {clean_acc * 100:8.2f}% {0:10.2f} {0:9d}")
        for name, change in ATTACKS.items():
            res = simulate(work, name, {**base, **change})
            acc = res["teacher"]["accuracy"]
            drop = (clean_acc - acc) * 100
            out[f"{name}_drop_pt"] = drop
            out["runs"][name] = {
                "settings": change,
                "accuracy": acc,
                "drop_pt": drop,
                "rejected": len(res["rejected"]),
                "failed": sum(len(r["clients_failed"]) for r in res["rounds"]),
                "byzantine_partitions": res["faults"]["byzantine_partitions"],
            }
            print(f"{name:24} {acc * 100:8.2f}% {drop:10.2f} {len(res['rejected']):9d}")
        rng = random.Random(args.seed)
        trials = []
        for i in range(args.trials):
            at = rng.uniform(0.15, 0.95) * clean["wall_s"]
            trial = resume_trial(work, i, base, at)
            trial["identical"] = trial["final_model_sha256"] == clean["final_model_sha256"]
            trials.append(trial)
            print(
                f"resume trial {i}: kill at {at:5.1f} s, {trial['how']}, after "
                f"{trial['checkpoints_at_kill'][-1:] or 'no checkpoint'}: identical={trial['identical']}"
            )
        out["resume_trials"] = trials
        out["resume_identical"] = all(t["identical"] for t in trials)
        out["clean_final_model_sha256"] = clean["final_model_sha256"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"resume: {sum(t['identical'] for t in trials)}/{len(trials)} identical -> {args.json}")


if __name__ == "__main__":
    main()
