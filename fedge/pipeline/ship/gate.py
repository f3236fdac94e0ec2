"""The quality gate: a teacher no better than chance is neither compressed nor shipped."""

from __future__ import annotations

import logging

import numpy as np
from onnxruntime import InferenceSession

from fedge.core.config import RunConfig
from fedge.core.ort import session_accuracy
from fedge.core.partition import Split
from fedge.pipeline.outputs.rows import CandidateRow, GateVerdict, StudentVerdict

log = logging.getLogger("fedge")


class NotShippedError(RuntimeError):
    """The teacher or the chosen student failed the quality gate, and `ship-anyway` is off."""

    def __init__(self, gate: GateVerdict | StudentVerdict) -> None:
        super().__init__(gate.reason)
        self.gate = gate


def gate_teacher(
    cfg: RunConfig, session: InferenceSession, val: Split
) -> tuple[float, GateVerdict]:
    """The teacher's validation accuracy (onnxruntime `session`) and the gate's verdict on it."""
    teacher_val = session_accuracy(session, val.x, val.y)
    return teacher_val, check_teacher(cfg, teacher_val, val.y)


def check_teacher(cfg: RunConfig, teacher_val: float, val_y: np.ndarray) -> GateVerdict:
    """The gate's verdict on the teacher's validation accuracy (results.json "quality_gate").

    Chance is what always answering the most common validation label scores (on balanced
    classes 1/K); the teacher must close teacher-margin of the gap from chance to 100 %, and
    reach teacher-floor: max(floor, chance + margin x (1 - chance)), never above 100 %.
    """
    counts = np.bincount(np.asarray(val_y, dtype=np.int64))
    chance = float(counts.max() / counts.sum()) if counts.sum() else 0.0
    threshold = max(cfg.teacher_floor, chance + cfg.teacher_margin * (1.0 - chance))
    passed = teacher_val >= threshold
    reason = (
        f"teacher validation accuracy {100 * teacher_val:.2f} % "
        f"{'reaches' if passed else 'is below'} the gate's {100 * threshold:.2f} % "
        f"(chance {100 * chance:.2f} % + teacher-margin {cfg.teacher_margin:g} of the rest"
        + (f", teacher-floor {100 * cfg.teacher_floor:.2f} %" if cfg.teacher_floor else "")
        + ")"
    )
    gate = GateVerdict(
        passed=bool(passed),
        teacher_val_accuracy=teacher_val,
        chance=chance,
        threshold=threshold,
        teacher_margin=cfg.teacher_margin,
        teacher_floor=cfg.teacher_floor,
        ship_anyway=cfg.ship_anyway,
        reason=reason,
    )
    _enforce(gate, "Nothing is compressed or shipped; to ship this teacher", cfg.ship_anyway)
    return gate


def check_student(cfg: RunConfig, row: CandidateRow, teacher_val: float) -> StudentVerdict:
    """The gate's verdict on the chosen student (NotShippedError if it fails, unless ship-anyway).

    It passes at most student-max-drop validation points below the teacher.
    """
    passed = row.drop_pt <= cfg.student_max_drop
    reason = (
        f"student {row.student} validation accuracy {100 * row.val_accuracy:.2f} % is "
        f"{row.drop_pt:.2f} points below the teacher's {100 * teacher_val:.2f} % "
        f"({'within' if passed else 'more than'} student-max-drop {cfg.student_max_drop:g})"
    )
    verdict = StudentVerdict(
        passed=passed,
        student=row.student,
        student_val_accuracy=row.val_accuracy,
        teacher_val_accuracy=teacher_val,
        drop_pt=row.drop_pt,
        max_drop_pt=cfg.student_max_drop,
        ship_anyway=cfg.ship_anyway,
        reason=reason,
    )
    _enforce(verdict, "Nothing is signed or shipped; to ship this student", cfg.ship_anyway)
    return verdict


def _enforce(verdict: GateVerdict | StudentVerdict, stops: str, ship_anyway: bool) -> None:
    """Log a failed verdict; NotShippedError unless ship-anyway. `stops`: what the failure stops."""
    if verdict.passed:
        return
    if ship_anyway:
        log.warning("quality gate FAILED, shipping anyway (ship-anyway): %s", verdict.reason)
        return
    log.error(
        "quality gate FAILED: %s. %s anyway: fedge compress RUN --ship-anyway",
        verdict.reason,
        stops,
    )
    raise NotShippedError(verdict)
