"""One epsilon budget over every release of a run: the teacher's rounds and the student's rounds.

A run under DP releases its clients' data through the teacher's rounds and, when the student
learns on the clients (kd-source federated or both), through the student's federated rounds.
Both are subsampled Gaussian steps at the same sample rate; the accountant composes them, and
dp-epsilon bounds the composition. How it is shared: with dp-teacher-epsilon 0 every step has
the same noise; with dp-teacher-epsilon e the teacher's steps alone spend e and the student's
get the smallest noise that keeps the whole within dp-epsilon.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedge.core.config import RunConfig
from fedge.privacy.accountant import noise_after, noise_for_epsilon


@dataclass(frozen=True)
class PhaseNoise:
    """The noise multiplier of each phase's steps (student 0.0: the run has no student steps)."""

    teacher: float
    student: float


def student_trainings(cfg: RunConfig) -> int:
    """How many students may train on the clients: 0 (public pool), 1, or each auto candidate."""
    if cfg.distill_from == "public" or cfg.tiers:  # tiers distil on the public pool
        return 0
    return len(cfg.auto_candidates) if cfg.student == "auto" else 1


def phase_noise(cfg: RunConfig, rate: float, teacher_steps: int, student_steps: int) -> PhaseNoise:
    """The noise of the teacher's and the student's steps for these schedules (all at `rate`).

    `student_steps`: every student step the run may take (all trainings). dp-epsilon 0: both at
    dp-noise. ConfigError when the budget cannot be met.
    """
    if cfg.dp_epsilon <= 0:
        return PhaseNoise(cfg.dp_noise, cfg.dp_noise if student_steps else 0.0)
    delta, accountant = cfg.dp_delta, cfg.dp_accountant
    if not student_steps:
        return PhaseNoise(
            noise_for_epsilon(cfg.dp_epsilon, rate, teacher_steps, delta, accountant), 0.0
        )
    if cfg.dp_teacher_epsilon <= 0:
        both = noise_for_epsilon(
            cfg.dp_epsilon, rate, teacher_steps + student_steps, delta, accountant
        )
        return PhaseNoise(both, both)
    teacher = noise_for_epsilon(cfg.dp_teacher_epsilon, rate, teacher_steps, delta, accountant)
    prior = ((teacher, rate, teacher_steps),)
    student = noise_after(prior, cfg.dp_epsilon, rate, student_steps, delta, accountant)
    return PhaseNoise(teacher, student)
