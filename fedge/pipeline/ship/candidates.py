"""Compression candidates (a sweep grid of students x pruning ratios x quantization) and the choice."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from onnxruntime import InferenceSession

from fedge.compression.resources import measured
from fedge.core.archspec import is_arch
from fedge.core.choices import STUDENTS
from fedge.core.config import ConfigError, RunConfig
from fedge.core.io import gzip_size
from fedge.core.models import build_student, count_params
from fedge.core.ort import interleaved_latency_us, make_session, session_accuracy, session_call
from fedge.core.partition import Federation
from fedge.core.progress import Progress
from fedge.pipeline.chain.federate import FederatedTrainer
from fedge.pipeline.chain.stages import (
    CompressionConfig,
    CompressionOutcome,
    Inputs,
    Work,
    compress,
)
from fedge.pipeline.chain.teacher_source import KdSource
from fedge.pipeline.outputs.rows import CandidateRow
from fedge.pipeline.ship.shipping import MEASURED, Timing

log = logging.getLogger("fedge")
# Quantization choices of a sweep and the settings each one stands for.
QUANT_CHOICES: dict[str, dict[str, Any]] = {
    "fp32": {"quant-mode": "none"},
    "qdq": {"quant-mode": "static", "quant-format": "qdq"},
    "qoperator": {"quant-mode": "static", "quant-format": "qoperator"},
    "dynamic": {"quant-mode": "dynamic"},
    "weights": {"quant-mode": "weights"},
}
DEFAULT_SWEEP_DROP = 1.0  # points: the limit a sweep chooses under when none is given


@dataclass(frozen=True)
class SweepGrid:
    """The sweep grid; every combination is compressed (distillation and pruning are shared)."""

    students: tuple[str, ...] = STUDENTS
    prune_ratios: tuple[float, ...] = (0.0, 0.3, 0.5)
    quant: tuple[str, ...] = tuple(QUANT_CHOICES)
    only: tuple[tuple[str, str], ...] = ()  # if given: just these (student, quant) pairs

    def __post_init__(self) -> None:
        for name, values, allowed in (
            ("sweep student", self.students, STUDENTS),
            ("sweep quant", self.quant, tuple(QUANT_CHOICES)),
        ):
            for value in values:
                if value not in allowed and not (name == "sweep student" and is_arch(value)):
                    raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")
        for ratio in self.prune_ratios:
            if not 0 <= ratio < 1:
                raise ConfigError(f"sweep prune ratio must be in [0, 1), got {ratio}")
        if not (self.students and self.prune_ratios and self.quant):
            raise ConfigError("a sweep needs at least one student, prune ratio and quant choice")

    def configs(self, cfg: RunConfig) -> list[RunConfig]:
        """`cfg` with each grid point's settings, students outermost (shared stages stay hot)."""
        return [
            with_quant(cfg, quant, student=student, **{"prune-ratio": ratio})
            for student in self.students
            for ratio in self.prune_ratios
            for quant in self.quant
            if not self.only or (student, quant) in self.only
        ]


def with_quant(cfg: RunConfig, quant: str, **settings: Any) -> RunConfig:
    """`cfg` with the quantization a sweep or search names (a QUANT_CHOICES key) and settings."""
    return RunConfig.from_run_config({**cfg.to_run_config(), **settings, **QUANT_CHOICES[quant]})


@dataclass(frozen=True)
class Choice:
    """How to choose among candidates (at most one limit).

    The smallest candidate within `max_accuracy_drop` validation points of the teacher, or the
    most accurate one within `max_bytes`.
    """

    max_accuracy_drop: float | None = None  # points
    max_bytes: int | None = None
    # When no candidate meets max_accuracy_drop: the most accurate one instead of an error.
    or_most_accurate: bool = False

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is not None and self.max_bytes is not None:
            raise ConfigError("give --max-accuracy-drop or --max-bytes, not both")
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop < math.inf:
            raise ConfigError(
                f"max-accuracy-drop must be a finite number >= 0, got {self.max_accuracy_drop}"
            )
        if self.max_bytes is not None and self.max_bytes < 1:
            raise ConfigError(f"max-bytes must be >= 1, got {self.max_bytes}")

    @property
    def active(self) -> bool:
        """Whether a choice was asked for."""
        return self.max_accuracy_drop is not None or self.max_bytes is not None

    def admits(self, row: CandidateRow) -> bool:
        """Whether a candidate row satisfies the limit."""
        if self.max_accuracy_drop is not None:
            return row.drop_pt <= self.max_accuracy_drop
        return self.max_bytes is None or row.bytes <= self.max_bytes


@dataclass
class Candidate:
    """One compressed point: its table row, settings and outcome."""

    row: CandidateRow
    cfg: RunConfig
    compression: CompressionConfig
    outcome: CompressionOutcome = field(repr=False)


def quant_name(cfg: RunConfig) -> str:
    """The sweep's name for a config's quantization."""
    if cfg.quant_mode == "static":
        return cfg.quant_format
    return "fp32" if cfg.quant_mode == "none" else cfg.quant_mode


def candidate_configs(
    cfg: RunConfig, choice: Choice, grid: SweepGrid | None
) -> tuple[list[RunConfig], Choice | None, Choice]:
    """What to compress, when to stop early, and the rule to choose by.

    A sweep compresses every grid point (default rule: within DEFAULT_SWEEP_DROP points); a
    limit alone tries the students smallest first (stopping at the first within an accuracy
    limit); student auto tries auto-students in order and stops at the first within
    auto-max-drop validation points of the teacher (if none is, the most accurate one ships);
    otherwise the one config.
    """
    if grid is not None:
        rule = choice if choice.active else Choice(max_accuracy_drop=DEFAULT_SWEEP_DROP)
        return grid.configs(cfg), None, rule
    if choice.active:
        stop = choice if choice.max_accuracy_drop is not None else None
        return [cfg.replace(student=student) for student in STUDENTS], stop, choice
    if cfg.student == "auto":
        rule = Choice(max_accuracy_drop=cfg.auto_max_drop, or_most_accurate=True)
        return [cfg.replace(student=name) for name in cfg.auto_candidates], rule, rule
    return [cfg], None, choice


def byte_floor(cfg: RunConfig, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Bytes below which no compression of `cfg`'s student can go: one byte per int8 weight.

    Structured pruning at ratio r keeps about (1 - r)^2 of a layer's weights (fewer inputs and
    outputs); the floor takes that, so it never exceeds what compression reaches.
    """
    model = build_student(input_shape, num_classes, cfg.student, cfg.seed)
    return int(count_params(model) * (1 - cfg.prune_ratio) ** 2)


def check_byte_budget(configs: list[RunConfig], choice: Choice, fed: Federation) -> None:
    """ConfigError before any training if max-bytes is below every candidate's byte floor."""
    if choice.max_bytes is None:
        return
    prep, classes = fed.dataset.preprocessing, fed.dataset.num_classes
    floors = {(c.student, c.prune_ratio): byte_floor(c, prep.input_shape, classes) for c in configs}
    (student, ratio), floor = min(floors.items(), key=lambda item: item[1])
    if choice.max_bytes < floor:
        raise ConfigError(
            f"max-bytes={choice.max_bytes} is below what any candidate can reach: the smallest, "
            f"{student} at prune ratio {ratio}, needs at least {floor} bytes (one per int8 "
            "weight); allowed: a larger max-bytes or a higher prune-ratio"
        )


def _candidate_row(
    cfg: RunConfig,
    outcome: CompressionOutcome,
    fed: Federation,
    teacher_val: float,
    teacher_session: InferenceSession | None,
    timing: Timing,
) -> CandidateRow:
    """One compressed candidate, measured on raw validation and test inputs, and logged."""
    val, test, prep = fed.server.val, fed.server.test, fed.dataset.preprocessing
    raw_val = prep.invert(val.x)
    session = make_session(outcome.student_bytes)
    val_acc = session_accuracy(session, raw_val, val.y)
    row = CandidateRow(
        student=cfg.student,
        prune_ratio=cfg.prune_ratio,
        quant=quant_name(cfg),
        quantized=outcome.quantization.quantized,
        params=outcome.student_params,
        bytes=len(outcome.student_bytes),
        gzip_bytes=gzip_size(outcome.student_bytes),
        val_accuracy=val_acc,
        drop_pt=(teacher_val - val_acc) * 100,
        test_accuracy=session_accuracy(session, prep.invert(test.x), test.y),
        **_latency(teacher_session, val.x, session, raw_val, timing.candidate),
        resources=measured(outcome.student_bytes, f"candidate {cfg.student}"),
    )
    log.info(
        "candidate %-11s prune %.2f %-9s validation %.4f  bytes %7d  b1 %.1f us",
        row.student,
        row.prune_ratio,
        row.quant,
        val_acc,
        row.bytes,
        row.b1_us,
    )
    return row


def compress_candidates(
    source: KdSource,
    configs: list[RunConfig],
    fed: Federation,
    *,
    teacher_val: float,
    teacher_session: InferenceSession | None = None,
    federated: FederatedTrainer | None = None,
    stop: Choice | None = None,
    timing: Timing = MEASURED,
) -> list[Candidate]:
    """Compress each config, sharing distillation and pruning between configs that agree on them.

    Each row has validation and test accuracy of the device model on raw input, its bytes, gzip
    bytes, and its batch-1 / batch-64 onnxruntime latency measured interleaved with the teacher.
    `teacher_val` is the reference accuracy for `drop_pt`; `teacher_session` (optional) is timed
    beside each candidate. A `source` that knows only a fixed transfer set (an ensemble) gets
    CompressionConfig.on_fixed_views. `federated` runs student rounds for kd-source federated or
    both. With `stop`, candidates are compressed in order until one satisfies it.
    """
    val, test, prep = fed.server.val, fed.server.test, fed.dataset.preprocessing
    inputs = Inputs(
        source.teacher, source.pool, val, test, prep, fed.dataset.num_classes, federated
    )
    cache: dict[tuple[Any, ...], Work] = {}
    out: list[Candidate] = []
    progress = Progress(
        "candidates compressed", len(configs), every=0.0 if len(configs) > 1 else 1e9
    )
    for index, cfg in enumerate(configs):
        progress.step(index, f"next: {cfg.student}, prune {cfg.prune_ratio}, {quant_name(cfg)}")
        compression = CompressionConfig.from_run(cfg)
        if source.fixed_views is not None:
            compression = compression.on_fixed_views(source.fixed_views)
        outcome = compress(compression, inputs, cache)
        row = _candidate_row(cfg, outcome, fed, teacher_val, teacher_session, timing)
        out.append(Candidate(row, cfg, compression, outcome))
        if stop is not None and stop.admits(row):
            break
    return out


class NoCandidateError(ConfigError):
    """No compressed candidate meets the choice's limit: they are kept for the sweep's table."""

    def __init__(self, message: str, candidates: list[Candidate], choice: Choice) -> None:
        super().__init__(message)
        self.candidates, self.choice = candidates, choice


def choose(candidates: list[Candidate], choice: Choice) -> Candidate:
    """The candidate the choice asks for (the first one without a limit).

    Within max-accuracy-drop: fewest bytes, then most accurate, then fastest. Within max-bytes:
    most accurate, then fewest bytes. ConfigError if none satisfies the limit.
    """
    if not choice.active:
        return candidates[0]
    fits = [c for c in candidates if choice.admits(c.row)]
    if not fits and choice.or_most_accurate:
        return max(candidates, key=lambda c: (c.row.val_accuracy, -c.row.bytes))
    if not fits:
        tried = ", ".join(
            f"{c.row.label} {c.row.drop_pt:.2f} pt {c.row.bytes} B" for c in candidates
        )
        limit = (
            f"no candidate is within max-accuracy-drop={choice.max_accuracy_drop} points of the "
            "teacher on validation (loosen it: a larger --max-accuracy-drop)"
            if choice.max_accuracy_drop is not None
            else f"no candidate fits max-bytes={choice.max_bytes} (loosen it: a larger --max-bytes)"
        )
        raise NoCandidateError(f"{limit} (tried: {tried})", candidates, choice)
    if choice.max_accuracy_drop is not None:
        return min(fits, key=lambda c: (c.row.bytes, -c.row.val_accuracy, c.row.b1_us))
    return max(fits, key=lambda c: (c.row.val_accuracy, -c.row.bytes))


def pareto(rows: list[dict[str, Any]], cost: str) -> list[bool]:
    """For each row, whether no other row is at least as accurate (validation) and cheaper."""
    flags = []
    for row in rows:
        dominated = any(
            other["val_accuracy"] >= row["val_accuracy"]
            and other[cost] <= row[cost]
            and (other["val_accuracy"] > row["val_accuracy"] or other[cost] < row[cost])
            for other in rows
        )
        flags.append(not dominated)
    return flags


def _latency(
    teacher: InferenceSession | None,
    x: np.ndarray,
    student: InferenceSession,
    raw: np.ndarray,
    calls: tuple[int, int, int],
) -> dict[str, Any]:
    """Student batch-1 / batch-64 p50 in onnxruntime, interleaved with the teacher if known.

    The CandidateRow fields b1_us, b64_us, teacher_b1_us and teacher_b64_us.
    """
    x64, raw64 = np.resize(x, (64, *x.shape[1:])), np.resize(raw, (64, *raw.shape[1:]))
    figures: dict[str, float | None] = {}
    warmup, b1_iters, b64_iters = calls
    for name, batch, raw_batch, iters in (
        ("b1", x[:1], raw[:1], b1_iters),
        ("b64", x64, raw64, b64_iters),
    ):
        sides = {"student": session_call(student, raw_batch)}
        if teacher is not None:
            sides["teacher"] = session_call(teacher, batch)
        timing = interleaved_latency_us(sides, warmup=warmup, iters=iters)
        figures[f"{name}_us"] = timing["student"]["p50"]
        figures[f"teacher_{name}_us"] = timing["teacher"]["p50"] if teacher is not None else None
    return figures
