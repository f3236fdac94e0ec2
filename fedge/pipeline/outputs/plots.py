"""The run's figures: accuracy per round, a sweep's Pareto fronts, the audit's ROC curves (PNG bytes)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # results.py draws with these functions
    from fedge.pipeline.outputs.results import RunResults

QUANT_MARKERS = {"fp32": "o", "qdq": "s", "qoperator": "D", "dynamic": "^", "weights": "v"}
# Distinct line styles, so that two models with identical curves are both visible.
ROC_STYLES = (
    {"ls": "-", "lw": 2.6},
    {"ls": "--", "lw": 2.0},
    {"ls": "-.", "lw": 1.6},
    {"ls": ":", "lw": 2.2},
    {"ls": (0, (5, 1, 1, 1)), "lw": 1.2},
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def accuracy_plot(results: RunResults) -> bytes:
    """Central test accuracy of the teacher per round, with the deployed student as a line."""
    plt = _pyplot()
    rounds = [r["round"] for r in results.rounds]
    accuracy = [100 * r["accuracy"] for r in results.rounds]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(rounds, accuracy, marker="o", label="teacher (federated, central test)")
    student = results.student
    if student is not None:  # None: the quality gate shipped nothing
        ax.axhline(
            100 * student.accuracy,
            color="C2",
            linestyle="--",
            label=f"deployed student ({student.onnx_bytes / 1024:.1f} KiB)",
        )
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(rounds)
    cfg = results.config
    ax.set_title(f"{cfg['dataset']}: {cfg['clients']} clients, {cfg['partition']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def pareto_plot(table: dict[str, Any]) -> bytes:
    """Validation accuracy against flash bytes, batch-1 latency and the activation arena.

    Colour = student, marker = what ships (a refused int8 point ships fp32). The arena panel
    is drawn when every row has one (older tables lack it).
    """
    plt = _pyplot()
    rows = table["rows"]
    students = list(dict.fromkeys(r["student"] for r in rows))
    colours = {s: f"C{i}" for i, s in enumerate(students)}
    panels = [
        ("bytes", "pareto_bytes", "flash: shipped bytes (log)"),
        ("b1_us", "pareto_latency", "batch-1 latency, onnxruntime 1 thread (µs, log)"),
    ]
    if all(r.get("pareto_arena") is not None for r in rows):
        panels.append(
            ("arena_bytes", "pareto_arena", "peak activation memory, batch 1 (bytes, log)")
        )
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), sharey=True)
    for ax, (cost, flag, label) in zip(axes, panels, strict=True):
        _pareto_axis(ax, table, colours, cost, flag)
        ax.set_xlabel(label)
    handles = [
        plt.Line2D([], [], ls="", marker="o", color=colours[s], label=s) for s in students
    ] + [
        plt.Line2D([], [], ls="", marker=m, color="grey", label=q)
        for q, m in QUANT_MARKERS.items()
        if any(_ships(r) == q for r in rows)
    ]
    handles += axes[0].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8)
    axes[0].set_ylabel("validation accuracy (%)")
    rows_of_legend = -(-len(handles) // 6)
    fig.tight_layout(rect=(0.0, 0.05 * rows_of_legend + 0.02, 1.0, 1.0))  # legend below the data
    return _png(fig)


def _ships(row: dict[str, Any]) -> str:
    """What a candidate ships: its quantization, or fp32 when the guard refused int8."""
    return str(row["quant"]) if row["quantized"] else "fp32"


def _pareto_axis(
    ax: Any, table: dict[str, Any], colours: dict[str, str], cost: str, flag: str
) -> None:
    """One panel: every point, the Pareto front as a step line, the choice and the limits."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = table["rows"]
    for r in rows:
        marker = QUANT_MARKERS.get(_ships(r), "o")
        colour = colours[r["student"]]
        ax.scatter(r[cost], 100 * r["val_accuracy"], marker=marker, color=colour, alpha=0.75, s=42)
    front = sorted((r for r in rows if r[flag]), key=lambda r: r[cost])
    ax.step(
        [r[cost] for r in front],
        [100 * r["val_accuracy"] for r in front],
        where="post",
        color="black",
        lw=1.6,
        zorder=4,
        label="Pareto front",
    )
    for r in (r for r in rows if r["chosen"]):  # named in the legend: no arrow over the data
        ax.scatter(
            r[cost],
            100 * r["val_accuracy"],
            s=320,
            marker="*",
            c="red",
            zorder=5,
            label=f"chosen: {r['student']}, prune {r['prune_ratio']}, {r['quant']}",
        )
    if table["max_accuracy_drop_pt"] is not None:
        limit = 100 * table["teacher_val_accuracy"] - table["max_accuracy_drop_pt"]
        ax.axhline(limit, color="red", lw=0.8, ls=":", label="accuracy limit")
    if table["max_bytes"] is not None and cost == "bytes":
        ax.axvline(table["max_bytes"], color="red", lw=0.8, ls=":", label="byte budget")
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 10 else f"{v:g}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1-2-5: never crowded
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())  # unlabelled minor ticks: no overlapping text
    ax.tick_params(axis="x", which="major", labelrotation=30, labelsize=8)
    ax.grid(alpha=0.3, which="both")


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], models: dict[str, Any]) -> bytes:
    """Log-log ROC of every model, with the chance line; identical curves stay visible."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    drawn: dict[bytes, str] = {}
    for index, (name, (fpr, tpr)) in enumerate(curves.items()):
        key = np.concatenate([fpr, tpr]).tobytes()
        same = f", same as {drawn[key]}" if key in drawn else ""
        drawn.setdefault(key, name)
        ax.plot(
            np.maximum(fpr, 1e-4),
            np.maximum(tpr, 1e-4),
            **ROC_STYLES[index % len(ROC_STYLES)],
            label=f"{name} (AUC {models[name]['auc']:.3f}{same})",
        )
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(1e-3, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("LiRA membership inference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)
