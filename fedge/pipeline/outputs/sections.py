"""Sections both reports share: teacher vs stages vs student, the candidates, the privacy note."""

from __future__ import annotations

from typing import Any

from fedge.compression.energy import DEFAULT
from fedge.compression.resources import Resources
from fedge.pipeline.outputs.rows import (
    ChoiceRecord,
    CompressionRecord,
    EnsembleSummary,
    StudentFigures,
)


def compression_lines(record: CompressionRecord, sparsity: float) -> list[str]:
    """Teacher vs each stage vs the deployed student: accuracy, size, latency."""
    teacher, student = record.teacher, record.student
    assert student is not None and teacher.latency_us is not None
    gate = record.quality_gate
    size = teacher.onnx_bytes
    chosen = record.choice.chosen if record.choice is not None else None
    shipped = chosen.resources if chosen is not None else None
    int8 = chosen.int8_kernels if chosen is not None else student.quantized  # for the energy
    lines = [
        "## Teacher and compression stages (central test split)",
        "",
        *([] if gate.passed else [f"**Shipped despite the quality gate**: {gate.reason}.", ""]),
        distilled_from(record.ensemble),
        "",
        "| model | accuracy | params | bytes | vs teacher ONNX | MACs | arena |",
        "|---|---:|---:|---:|---:|---:|---:|",
        _row("teacher (fp32 ONNX)", teacher.accuracy, teacher.params or 0, size, size),
        *(_row(s.name, s.accuracy, s.params, s.bytes, size, s.resources) for s in record.stages),
        _row(
            "**deployed student**",
            student.accuracy,
            student.params,
            student.onnx_bytes,
            size,
            shipped,
        ),
        "",
        "Bytes of `distilled`, `pruned` and `federated` are their raw fp32 weights; the others "
        "are ONNX files, the flash they take. MACs and arena (peak activation memory, batch 1) "
        "are read from each student ONNX graph.",
        f"Shipped file gzip-compressed: {student.gzip_bytes:,} bytes"
        + (
            f" (magnitude sparsity {sparsity:.0%}: zeros shrink the gzip size, not the raw file "
            "or the latency)."
            if sparsity
            else "."
        ),
        f"Quantization: {student.quantization_reason}.",
        "",
        "| latency, onnxruntime 1 thread | batch 1 p50 | batch 64 p50 | energy, batch 1 (est.) |",
        "|---|---:|---:|---:|",
        f"| teacher fp32 | {teacher.latency_us.b1_p50:.1f} µs | {teacher.latency_us.b64_p50:.1f} µs | |",
        f"| deployed student | {student.latency_us.b1_p50:.1f} µs | "
        f"{student.latency_us.b64_p50:.1f} µs | {_energy(shipped, int8)} |",
        "",
        f"Energy is an estimate, not a measurement: {ENERGY_NOTE}.",
        "",
        f"Size ratio {student.size_ratio:.1f}x, accuracy change "
        f"{100 * (student.accuracy - teacher.accuracy):+.2f} points.",
        *_ort_lines(student),
        *_tflite_lines(student),
    ]
    return lines


def _ort_lines(student: StudentFigures) -> list[str]:
    """The bundle's model.ort, when the run asked for one."""
    o = student.ort
    if o is None:
        reason = student.ort_reason
        return ["", f"model.ort was asked for but not made: {reason}"] if reason else []
    return [
        "",
        f"model.ort (ORT Mobile, batch 1): {o.bytes:,} bytes, NNAPI as is: "
        f"{'YES' if o.nnapi_as_is else 'NO'}, accuracy {100 * o.accuracy:.2f} %, labels "
        f"agreeing with model.onnx on {100 * o.label_agreement:.2f} % of the test split.",
    ]


def _tflite_lines(student: StudentFigures) -> list[str]:
    """The bundle's model.tflite, when the run asked for one."""
    t = student.tflite
    if t is None:
        reason = student.tflite_reason
        return ["", f"model.tflite was asked for but not made: {reason}"] if reason else []
    tflm = f"{t.tflm_arena_bytes:,} bytes" if t.tflm_arena_bytes else "not measured"
    return [
        "",
        f"model.tflite (full-integer int8, LiteRT and TensorFlow Lite Micro): {t.bytes:,} bytes "
        f"flash, activation arena {t.planned_arena_bytes:,} bytes (TFLM's total: {tflm}), "
        f"accuracy {100 * t.accuracy:.2f} % in LiteRT, labels agreeing with model.onnx on "
        f"{100 * t.label_agreement:.2f} % of the test split.",
    ]


def privacy_lines(privacy: dict[str, Any]) -> list[str]:
    """The formal guarantee, when the run trained with DP."""
    if privacy["mode"] == "none":
        return ["", "## Privacy", "", "No differential privacy (`dp none`): no formal guarantee."]
    what = (
        f"client-level DP-FedAvg, updates clipped to {privacy['clipping_norm']} on the "
        f"{privacy['clipping']}, noise multiplier {privacy['noise_multiplier']:.3f}"
        if privacy["mode"] == "central"
        else f"sample-level DP-SGD on every client (per-sample gradients clipped to "
        f"{privacy['clipping_norm']}, smallest noise multiplier {privacy['noise_multiplier']:.3f})"
    )
    return [
        "",
        "## Privacy",
        "",
        f"Training: {what}. Spent: **epsilon = {privacy['epsilon']:.3f} at delta = "
        f"{privacy['delta']:g}** per {privacy['unit']} ({privacy['accountant']} accountant"
        + (f"; target {privacy['target_epsilon']}" if privacy["target_epsilon"] else "")
        + "). A round that averaged fewer clients is counted at the smaller noise it really gave.",
        "",
        *_releases(privacy.get("releases") or []),
    ]


def _releases(releases: list[dict[str, Any]]) -> list[str]:
    """What the epsilon above covers: the teacher's rounds only, or each release in order."""
    if len(releases) <= 1:
        return [
            "Compression trains only on the server's public pool (enforced in code), so the "
            "deployed student is post-processing of the DP teacher and inherits the same "
            "(epsilon, delta)."
        ]
    lines = [
        "The student's federated rounds ran under the same DP, and one accountant composes "
        "every release (the epsilon above is the total; the shipped student inherits it):",
        "",
        "| release | rounds | noise multiplier | epsilon after it |",
        "|---|---:|---:|---:|",
    ]
    for item in releases:
        noise, after = item.get("noise_multiplier"), item.get("epsilon_after")
        lines.append(
            f"| {item['release']} | {item['rounds']} | "
            f"{'-' if noise is None else f'{noise:.3f}'} | "
            f"{'-' if after is None else f'{after:.3f}'} |"
        )
    return lines


def distilled_from(ensemble: EnsembleSummary) -> str:
    """One sentence: which teacher the student learned from."""
    if ensemble.mode == "ensemble":
        who = (
            f"partitions {ensemble.clients} of the last round"
            if ensemble.clients is not None
            else f"the run's saved ensemble (`{ensemble.saved_in}`)"
        )
        agreement = (
            f"; the ensemble agrees with the global model on "
            f"{100 * ensemble.agreement_with_global:.1f} % of them"
            if ensemble.agreement_with_global is not None
            else ""
        )
        return (
            f"Distilled from an ensemble (FedDF-style): the mean logits of {who} on "
            f"{ensemble.transfer_inputs or 0:,} public transfer inputs{agreement}. Clients sent "
            "logits only. The teacher row below is the global model."
        )
    if ensemble.requested:
        return f"Distilled from the global model: ensemble requested, but {ensemble.reason}."
    return "Distilled from the global model."


def choice_lines(choice: ChoiceRecord) -> list[str]:
    """The candidates compared on validation, and which one shipped."""
    if len(choice.candidates) < 2 and not choice.sweep:
        return []
    limit = (
        f"at most {choice.max_accuracy_drop_pt} validation points below the teacher "
        f"({100 * choice.teacher_val_accuracy:.2f} %), then fewest bytes"
        if choice.max_accuracy_drop_pt is not None
        else f"at most {choice.max_bytes or 0:,} bytes, then most accurate on validation"
    )
    lines = [
        "",
        "## Candidates (validation split; the shipped one in bold)",
        "",
        f"Rule: {limit}."
        + (" Table: `sweep.csv`, `sweep.json`; plots: `pareto.png`." if choice.sweep else "")
        + f" Energy per batch-1 inference is an estimate: {ENERGY_NOTE}.",
        "",
        "| student | prune | quant | validation | drop (pt) | flash bytes | MACs | arena | "
        "batch-1 | energy (est.) | batch-64 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in choice.candidates:
        refused = not row.quantized and row.quant != "fp32"
        cells = [
            row.student,
            f"{row.prune_ratio:.2f}",
            f"{row.quant} (refused)" if refused else row.quant,
            pct(row.val_accuracy),
            f"{row.drop_pt:.2f}",
            f"{row.bytes:,}",
            *resource_cells(row.resources),
            us(row.b1_us),
            _energy(row.resources, row.int8_kernels),
            us(row.b64_us),
        ]
        if row == choice.chosen:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


ENERGY_NOTE = (
    f"MACs x pJ per MAC + bytes moved x pJ per byte, {DEFAULT.source}; devices differ several "
    "times over"
)


def _energy(resources: Resources | None, int8: bool) -> str:
    """The energy estimate of a batch-1 inference as a cell ('' without measured traffic)."""
    value = None if resources is None else DEFAULT.microjoules(resources, int8)
    return "" if value is None else f"{value:.3f} µJ"


def bundle_line(student: StudentFigures | None) -> str:
    """Where the signed bundle is, or why there is none."""
    if student is None:
        return "- Bundle: none (the quality gate stopped it)."
    return f"- Bundle: `bundle/` signed with Ed25519; model sha256 `{student.sha256[:16]}...`."


def _row(
    name: str,
    accuracy: float,
    params: int,
    size: int,
    teacher_bytes: int,
    resources: Resources | None = None,
) -> str:
    macs, arena = resource_cells(resources)
    ratio = f"{teacher_bytes / size:.1f}x"
    return f"| {name} | {pct(accuracy)} | {params:,} | {size:,} | {ratio} | {macs} | {arena} |"


def resource_cells(resources: Resources | None) -> tuple[str, str]:
    """MACs and arena bytes as table cells ('' where not measured)."""
    if resources is None:
        return "", ""
    return f"{resources.macs:,}", f"{resources.arena_bytes:,}"


def pct(value: float | None) -> str:
    """A share as a percentage with two decimals ('' for none)."""
    return "" if value is None else f"{100 * value:.2f} %"


def us(value: float | None) -> str:
    """Microseconds with one decimal ('' for none)."""
    return "" if value is None else f"{value:.1f} µs"
