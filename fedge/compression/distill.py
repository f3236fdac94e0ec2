"""Distillation stage: the aggregated teacher teaches a small student on the public pool only."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from fedge.compression.batchnorm import fold_batchnorm, with_batchnorm
from fedge.compression.kd import KDConfig, kd_train
from fedge.core.archspec import is_arch, parse
from fedge.core.choices import STUDENT_NORMS, STUDENTS
from fedge.core.config import RunConfig
from fedge.core.models import build_student
from fedge.core.partition import PublicPool


@dataclass(frozen=True)
class DistillConfig:
    """How to distill (built from the run's settings; see fedge.pipeline.chain.stages)."""

    student: str  # a member of the student family, or an arch: spec (student)
    epochs: int  # passes over the public pool (kd-epochs)
    kd: KDConfig  # what the student learns from the teacher, shared with pruning's fine-tuning
    lr: float = 0.005  # Adam learning rate, cosine decay (kd-lr)
    norm: str = "none"  # batch: BatchNorm after each convolution while distilling (student-norm)

    def __post_init__(self) -> None:
        if is_arch(self.student):
            parse(self.student)  # ValueError naming the spec and the format
        elif self.student not in STUDENTS:
            raise ValueError(
                f"unknown student {self.student!r}; allowed: {', '.join(STUDENTS)}, arch:SPEC"
            )
        if self.norm not in STUDENT_NORMS:
            raise ValueError(
                f"unknown student-norm {self.norm!r}; allowed: {', '.join(STUDENT_NORMS)}"
            )
        if self.lr <= 0 or self.epochs < 0:
            raise ValueError(f"invalid distill config: {self}")

    @classmethod
    def from_run(cls, cfg: RunConfig) -> DistillConfig:
        """KD on the public pool for kd-epochs (none when the student learns on clients only)."""
        epochs = 0 if cfg.distill_from == "federated" else cfg.kd_epochs
        kd = KDConfig.from_run(cfg)
        return cls(cfg.student, epochs, kd, lr=cfg.kd_lr, norm=cfg.student_norm)


def distill(
    teacher: nn.Module,
    public_pool: PublicPool,
    config: DistillConfig,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> nn.Module:
    """Return a new student trained by KD from `teacher` on the unlabeled public pool.

    norm "batch": the student trains with BatchNorm after its convolutions (the pool is one
    process's data, so batch statistics are meaningful here, unlike on non-IID clients), then
    each BatchNorm is folded into its convolution: the student returned has exactly the
    architecture's layers, so export, pruning, QAT and clients see no difference.
    """
    require_public_pool(public_pool)
    student = build_student(input_shape, num_classes, config.student, config.kd.seed)
    normed = with_batchnorm(student) if config.norm == "batch" and config.epochs else 0
    kd_train(student, teacher, public_pool.x, config.kd, epochs=config.epochs, lr=config.lr)
    if normed:
        fold_batchnorm(student.eval())
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
