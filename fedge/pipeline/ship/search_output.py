"""A search's trials (CSV and JSON) and its Pareto plot, the chosen architecture marked."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.pipeline.outputs.plots import _pyplot
from fedge.pipeline.ship.candidates import pareto
from fedge.pipeline.ship.search import Trial

SEARCH_DIR = "search"
TRIALS_CSV, TRIALS_JSON, PARETO_PLOT = "trials.csv", "trials.json", "pareto.png"
COLUMNS = (
    "trial",
    "student",
    "quant",
    "val_accuracy",
    "test_accuracy",
    "bytes",
    "params",
    "macs",
    "arena_bytes",
    "energy_uj",
    "quantized",
    "latency_us",
    "predicted_b1_us",
    "measured_b1_us",
    "seconds",
    "feasible",
    "pareto_latency",
    "pareto_bytes",
    "chosen",
)


def write_search(out: Path, trials: list[Trial], summary: dict[str, Any]) -> Path:
    """trials.csv, trials.json and pareto.png in out/search/; returns that directory."""
    rows = [t.to_json() for t in trials]
    for name, cost in (("pareto_latency", "latency_us"), ("pareto_bytes", "bytes")):
        for row, flag in zip(rows, pareto(rows, cost), strict=True):
            row[name] = flag
    target = out / SEARCH_DIR
    target.mkdir(exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row.get(k) for k in COLUMNS} for row in rows)
    atomic_write_bytes(target / TRIALS_CSV, buffer.getvalue().encode())
    atomic_write_json(target / TRIALS_JSON, {**summary, "rows": rows})
    atomic_write_bytes(target / PARETO_PLOT, search_plot(rows, summary))
    return target


def search_plot(rows: list[dict[str, Any]], summary: dict[str, Any]) -> bytes:
    """Validation accuracy against latency on the target and against bytes; budgets dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, cost, flag, label, budget in (
        (
            axes[0],
            "latency_us",
            "pareto_latency",
            f"batch-1 latency on {summary['target']} (µs, log)",
            summary["max_latency_us"],
        ),
        (axes[1], "bytes", "pareto_bytes", "shipped bytes (log)", summary["max_bytes"]),
    ):
        ax.scatter(
            [r[cost] for r in rows],
            [100 * r["val_accuracy"] for r in rows],
            c=["C0" if r["feasible"] else "0.6" for r in rows],
            s=30,
            alpha=0.8,
            label="trial (grey: over budget)",
        )
        front = sorted((r for r in rows if r[flag]), key=lambda r: r[cost])
        ax.step(
            [r[cost] for r in front],
            [100 * r["val_accuracy"] for r in front],
            where="post",
            color="C1",
            label="Pareto front",
        )
        chosen = next(r for r in rows if r["chosen"])
        ax.scatter(
            [chosen[cost]],
            [100 * chosen["val_accuracy"]],
            marker="*",
            s=220,
            color="C3",
            zorder=4,
            label="chosen",
        )
        if budget:
            ax.axvline(budget, color="C3", linestyle="--", linewidth=1, label="budget")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy after the trial's short distillation (%)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"student search: {len(rows)} trials, chose {summary['chosen']}", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
