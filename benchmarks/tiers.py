"""Device tiers scenario: each node should get a student within its tier budget as it measures.

    python benchmarks/tiers.py --json OUT.json [--seeds 3] [--scenario simulations/tiers.toml]

Per seed, one real `fedge simulate --scenario simulations/tiers.toml --seed S` (a Flower
simulation: 9 SuperNodes, a resource-budget tier and two batch-1 latency tiers). Each node installs
its tier's bundle and times the installed model's onnxruntime call on one sample (p50, blocks of
consecutive calls, nodes one at a time), and Predictor.predict around it. A node is within
budget when it installed its tier's model, the model meets the tier's resource limits exactly
(flash, activation arena, MACs) and the node's own p50 meets the latency budget, if any (the
server judged it with tier-latency-margin's headroom). A run whose budget no
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
from dataclasses import replace
from math import inf
from pathlib import Path
from typing import Any

from fedge.core.budgets import Budget


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


def _within(tier: dict[str, Any], client: dict[str, Any]) -> bool:
    """Whether a node is within its tier's budget.

    It installed its tier's model, the model meets every resource limit exactly, and the
    node's own timing meets the latency budget (when the tier has one).
    """
    budget = Budget.from_json(tier.get("budget") or {"latency_us": tier["budget_us"]})
    resources = replace(budget, latency_us=None)
    if not client["installed"] or resources.misses(
        None, tier["bytes"], tier.get("arena_bytes"), tier.get("macs")
    ):
        return False
    return budget.latency_us is None or (client["onnx_us_p50"] or inf) <= budget.latency_us


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per tier, over the runs that shipped."""
    done = [r for r in runs if r["exit"] == 0]
    names = [t["tier"] for t in done[0]["tiers"]] if done else []
    out = []
    for name in names:
        tiers = [next(t for t in r["tiers"] if t["tier"] == name) for r in done]
        nodes = [(r["seed"], c) for r in done for c in r["clients"] if c["tier"] == name]
        shipped = {r["seed"]: next(t for t in r["tiers"] if t["tier"] == name) for r in done}
        within = [c for seed, c in nodes if _within(shipped[seed], c)]
        slowest = [t["node_latency_us_max"] for t in tiers if t["node_latency_us_max"] is not None]
        out.append(
            {
                "tier": name,
                "budget_us": tiers[0]["budget_us"],
                "budget": tiers[0].get("budget"),
                "latency_margin": tiers[0].get("latency_margin", 1.0),
                "flash_bytes_max": max(t["bytes"] for t in tiers),
                "arena_bytes_max": max(t.get("arena_bytes") or 0 for t in tiers),
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
    counts = [s["nodes_within_budget"].split("/") for s in result["summary"]]
    result["tiers_nodes_within_budget"] = (
        f"{sum(int(k) for k, _ in counts)}/{sum(int(n) for _, n in counts)}"
    )
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
