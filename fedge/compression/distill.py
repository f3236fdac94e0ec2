"""Distillation stage: the aggregated teacher teaches a small student on the public pool only."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedge.compression.kd import kd_train
from fedge.core.models import STUDENT_WIDTHS, build_student
from fedge.core.partition import PublicPool


@dataclass(frozen=True)
class DistillConfig:
    """How to distill."""

    student: str = (
        "small"  # a STUDENT_WIDTHS member: tiny | small-fast | small | medium-fast | medium
    )
    temperature: float = 4.0  # softmax temperature of Hinton KD
    epochs: int = 150  # passes over the public pool
    lr: float = 0.005  # Adam learning rate (cosine decay)
    batch_size: int = 64  # public-pool batch size
    mixup: float = 0.4  # Beta(a, a) mixup of pool samples; 0 turns it off
    noise: float = 0.05  # std of Gaussian input noise on the pool views
    shift: int = 1  # random shift of up to this many pixels/steps (images and signals)
    labels: str = "soft"  # soft | hard (see kd_train)
    queries: str = "augmented"  # augmented | pool (see kd_train)
    seed: int = 0  # student initialisation and batch order

    def __post_init__(self) -> None:
        if self.student not in STUDENT_WIDTHS:
            raise ValueError(
                f"unknown student {self.student!r}; allowed: {', '.join(STUDENT_WIDTHS)}"
            )
        if self.temperature <= 0 or self.lr <= 0 or self.batch_size < 1 or self.epochs < 0:
            raise ValueError(f"invalid distill config: {self}")


def distill(
    teacher: nn.Module,
    public_pool: PublicPool,
    config: DistillConfig,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> nn.Module:
    """Return a new student trained by KD from `teacher` on the unlabeled public pool."""
    require_public_pool(public_pool)
    student = build_student(input_shape, num_classes, config.student, config.seed)
    kd_train(
        student,
        teacher,
        public_pool.x,
        epochs=config.epochs,
        temperature=config.temperature,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=config.seed,
        mixup=config.mixup,
        noise=config.noise,
        shift=config.shift,
        labels=config.labels,
        queries=config.queries,
    )
    return student


def require_public_pool(data: object) -> PublicPool:
    """Compression only ever sees the server's public pool, never labeled or client data.

    This is what lets the shipped student inherit the teacher's privacy guarantee
    (post-processing), so it is enforced here rather than trusted.
    """
    if not isinstance(data, PublicPool):
        raise TypeError(
            f"compression accepts only a PublicPool (the server's unlabeled public data), "
            f"got {type(data).__name__}"
        )
    return data
