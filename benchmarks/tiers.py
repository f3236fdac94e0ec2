"""Device tiers scenario: each node should get a student within its tier budget as it measures.

    python benchmarks/tiers.py --json OUT.json [--seeds 3] [--scenario simulations/tiers.toml]

Per seed, one real `fedge simulate --scenario simulations/tiers.toml --seed S` (a Flower
simulation: 9 SuperNodes, three tiers of batch-1 budgets on this machine). Each node installs
its tier's bundle and times the installed model's onnxruntime call on one sample (p50, blocks of
consecutive calls, nodes one at a time), and Predictor.predict around it. A run whose budget no
architecture meets (exit 2) is recorded with its message. The summary per tier: nodes within
budget over all seeds, the mean and spread over seeds of the slowest node, and the students.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def simulate(scenario: str, seed: int, out: Path) -> dict[str, Any]:
    """One run; its results.json, or the error it stopped with."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "fedge", "simulate", "--scenario", scenario, "--seed", str(seed)]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"seed": seed, "exit": proc.returncode, "error": lines[-1] if lines else ""}
    results = json.loads((out / "results.json").read_text())
    return {
        "seed": seed,
        "exit": 0,
        "seconds": seconds,
        "teacher_accuracy": results["teacher"]["accuracy"],
        "tiers": results["tiers"],
        "clients": [
            {k: c.get(k) for k in ("partition_id", "tier", "installed", "accuracy")}
            | {"onnx_us_p50": c.get("onnx_us_p50"), "predict_us_p50": c.get("latency_us_p50")}
            for c in results["clients"]
        ],
    }


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tier, over the runs that shipped."""
    done = [r for r in runs if r["exit"] == 0]
    names = [t["tier"] for t in done[0]["tiers"]] if done else []
    out = []
    for name in names:
        tiers = [next(t for t in r["tiers"] if t["tier"] == name) for r in done]
        nodes = [c for r in done for c in r["clients"] if c["tier"] == name]
        within = [c for c in nodes if (c["onnx_us_p50"] or float("inf")) <= tiers[0]["budget_us"]]
        slowest = [t["node_latency_us_max"] for t in tiers if t["node_latency_us_max"] is not None]
        out.append(
            {
                "tier": name,
                "budget_us": tiers[0]["budget_us"],
                "nodes_within_budget": f"{len(within)}/{len(nodes)}",
                "node_latency_us_max_mean": statistics.mean(slowest) if slowest else None,
                "node_latency_us_max_stdev": statistics.stdev(slowest) if len(slowest) > 1 else 0,
                "judged_latency_us_mean": statistics.mean(t["latency_us"] for t in tiers),
                "judged_on": sorted({t["judged_on"] for t in tiers}),
                "test_accuracy_mean": statistics.mean(t["test_accuracy"] for t in tiers),
                "students": [t["student"] for t in tiers],
            }
        )
    return out


def main() -> None:
    """Run the scenario per seed and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scenario", default="simulations/tiers.toml")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="fedge-tiers-") as tmp:
        for seed in range(args.seeds):
            runs.append(simulate(args.scenario, seed, Path(tmp) / f"run-{seed}"))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "clients"})[:600])
    result: dict[str, Any] = {
        "command": f"python benchmarks/tiers.py --seeds {args.seeds} --scenario {args.scenario}",
        "runs": runs,
        "shipped_runs": sum(r["exit"] == 0 for r in runs),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")  # the runs, whatever follows
    result["summary"] = summary(runs)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
