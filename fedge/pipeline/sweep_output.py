"""A sweep's table (CSV and JSON) and its Pareto plots, the chosen point marked."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.pipeline.candidates import Candidate, Choice, pareto

SWEEP_CSV, SWEEP_JSON, PARETO_PLOT = "sweep.csv", "sweep.json", "pareto.png"
COLUMNS = (
    "student",
    "prune_ratio",
    "quant",
    "quantized",
    "params",
    "bytes",
    "gzip_bytes",
    "val_accuracy",
    "drop_pt",
    "test_accuracy",
    "b1_us",
    "b64_us",
    "teacher_b1_us",
    "teacher_b64_us",
    "pareto_bytes",
    "pareto_latency",
    "chosen",
)


def sweep_table(
    candidates: list[Candidate], chosen: Candidate, choice: Choice, teacher_val: float
) -> dict[str, Any]:
    """Every row with its Pareto flags and whether it was chosen, plus the rule of the choice."""
    rows = [dict(c.row) for c in candidates]
    for name, cost in (("pareto_bytes", "bytes"), ("pareto_latency", "b1_us")):
        for row, flag in zip(rows, pareto(rows, cost), strict=True):
            row[name] = flag
    for row, candidate in zip(rows, candidates, strict=True):
        row["chosen"] = candidate is chosen
    return {
        "teacher_val_accuracy": teacher_val,
        "max_accuracy_drop_pt": choice.max_accuracy_drop,
        "max_bytes": choice.max_bytes,
        "rule": (
            "fewest bytes within max-accuracy-drop validation points of the teacher"
            if choice.max_accuracy_drop is not None
            else "most accurate on validation within max-bytes"
        ),
        "rows": rows,
    }


def write_sweep(out: Path, table: dict[str, Any]) -> None:
    """sweep.csv, sweep.json and pareto.png in `out`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in COLUMNS} for row in table["rows"])
    atomic_write_bytes(out / SWEEP_CSV, buffer.getvalue().encode())
    atomic_write_json(out / SWEEP_JSON, table)
    atomic_write_bytes(out / PARETO_PLOT, _plot(table))


def _plot(table: dict[str, Any]) -> bytes:
    """Validation accuracy against bytes and against batch-1 latency, fronts and choice marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    markers = {"fp32": "o", "qdq": "s", "qoperator": "D", "dynamic": "^"}
    for ax, cost, flag, label in (
        (axes[0], "bytes", "pareto_bytes", "shipped bytes (log)"),
        (axes[1], "b1_us", "pareto_latency", "batch-1 latency, onnxruntime 1 thread (µs, log)"),
    ):
        for quant, marker in markers.items():
            # A refused int8 point ships fp32: mark what ships.
            mine = [r for r in rows if (r["quant"] if r["quantized"] else "fp32") == quant]
            if mine:
                ax.scatter(
                    [r[cost] for r in mine],
                    [100 * r["val_accuracy"] for r in mine],
                    marker=marker,
                    alpha=0.6,
                    label=quant,
                )
        front = sorted((r for r in rows if r[flag]), key=lambda r: r[cost])
        ax.plot(
            [r[cost] for r in front],
            [100 * r["val_accuracy"] for r in front],
            "k--",
            lw=1,
            label="Pareto front",
        )
        for r in rows:
            if r["chosen"]:
                ax.scatter(
                    [r[cost]], [100 * r["val_accuracy"]], s=260, marker="*", c="red", zorder=5
                )
                ax.annotate(
                    f"chosen: {r['student']}, prune {r['prune_ratio']}, {r['quant']}",
                    (r[cost], 100 * r["val_accuracy"]),
                    textcoords="offset points",
                    xytext=(6, -14),
                    fontsize=8,
                )
        if table["max_accuracy_drop_pt"] is not None:
            ax.axhline(
                100 * table["teacher_val_accuracy"] - table["max_accuracy_drop_pt"],
                color="red",
                lw=0.8,
                ls=":",
                label="accuracy limit",
            )
        if table["max_bytes"] is not None and cost == "bytes":
            ax.axvline(table["max_bytes"], color="red", lw=0.8, ls=":", label="byte budget")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
