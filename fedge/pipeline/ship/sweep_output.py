"""A sweep's table (CSV and JSON) and its Pareto plots, the chosen point marked."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.pipeline.outputs.plots import pareto_plot
from fedge.pipeline.ship.candidates import Candidate, Choice, pareto

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
    "macs",
    "arena_bytes",
    "pareto_bytes",
    "pareto_latency",
    "pareto_arena",
    "chosen",
)


def sweep_table(
    candidates: list[Candidate], chosen: Candidate | None, choice: Choice, teacher_val: float
) -> dict[str, Any]:
    """Every row with its Pareto flags and whether it was chosen, plus the rule of the choice.

    `bytes` is the flash the shipped artifact takes; `macs` and `arena_bytes` (peak activation
    memory at batch 1) come from its graph, None where the graph could not be measured.

    `chosen` None: no candidate met the limit (the table and plots are written all the same).
    """
    rows = [_flat(c.row.to_json()) for c in candidates]
    costs = [
        ("pareto_bytes", "bytes"),
        ("pareto_latency", "b1_us"),
        ("pareto_arena", "arena_bytes"),
    ]
    for name, cost in costs:
        measured = all(row[cost] is not None for row in rows)
        flags = pareto(rows, cost) if measured else [None] * len(rows)
        for row, flag in zip(rows, flags, strict=True):
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


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A candidate's row with its MACs and arena as columns (None: not measured)."""
    resources = row.pop("resources", None) or {}
    return {**row, "macs": resources.get("macs"), "arena_bytes": resources.get("arena_bytes")}


def write_sweep(out: Path, table: dict[str, Any]) -> None:
    """sweep.csv, sweep.json and pareto.png in `out`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in COLUMNS} for row in table["rows"])
    atomic_write_bytes(out / SWEEP_CSV, buffer.getvalue().encode())
    atomic_write_json(out / SWEEP_JSON, table)
    atomic_write_bytes(out / PARETO_PLOT, pareto_plot(table))
