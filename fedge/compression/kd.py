"""Knowledge-distillation training loop (Hinton KD on unlabeled inputs), shared by distill and prune."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fedge.core.augment import random_shift
from fedge.core.choices import KD_LABELS, KD_QUERIES
from fedge.core.config import RunConfig
from fedge.core.progress import Progress
from fedge.core.training import RunningLoss, kd_loss, sgd_epoch, shuffled_batches

log = logging.getLogger("fedge")


@dataclass(frozen=True)
class KDConfig:
    """How a student learns from the teacher: shared by distillation and pruning's fine-tuning."""

    temperature: float  # Hinton KD softmax temperature (kd-temperature)
    labels: str  # soft (tempered probabilities) | hard (top class) (kd-labels)
    queries: str  # augmented (teacher labels every view) | pool (the samples only) (kd-queries)
    seed: int  # batch order and augmentation (the run's seed)
    batch_size: int = 64  # public-pool batch size
    mixup: float = 0.4  # Beta(a, a) mixup of pool samples (augmented queries only); 0: off
    noise: float = 0.05  # std of Gaussian input noise on the pool views
    shift: int = 1  # random shift of up to this many pixels/steps (images and signals)
    sample_budget: int = 0  # epochs x samples at most (kd-sample-budget); 0: no cap

    def __post_init__(self) -> None:
        if self.labels not in KD_LABELS or self.queries not in KD_QUERIES:
            raise ValueError(
                f"kd labels {self.labels!r} / queries {self.queries!r}; "
                f"allowed: {KD_LABELS} / {KD_QUERIES}"
            )
        if self.temperature <= 0 or self.batch_size < 1:
            raise ValueError(f"invalid KD config: {self}")

    @classmethod
    def from_run(cls, cfg: RunConfig) -> KDConfig:
        """The KD settings distillation and pruning's fine-tuning share."""
        return cls(
            temperature=cfg.kd_temperature,
            labels=cfg.kd_labels,
            queries=cfg.kd_queries,
            seed=cfg.seed,
            sample_budget=cfg.kd_sample_budget,
        )

    def without_augmentation(self) -> KDConfig:
        """The same settings for a teacher that only knows fixed inputs (no views on the fly)."""
        return dataclasses.replace(self, mixup=0.0, noise=0.0, shift=0)


def kd_train(
    student: nn.Module,
    teacher: nn.Module,
    inputs: np.ndarray,
    kd: KDConfig,
    *,
    epochs: int,
    lr: float,
) -> float:
    """Train `student` to match `teacher` on `inputs` (plus mixup/noise views the teacher labels).

    queries "augmented": the teacher labels every augmented input on the fly, so the student
    sees many more points of the teacher's function than the pool has samples. queries "pool":
    the teacher labels only the pool's own samples, once; the student sees label-preserving
    views (shift, noise; no mixup, whose blended label the teacher never gave), so the teacher
    is never asked about the space around and between the samples, where what it memorised
    shows most. labels "soft": the tempered probabilities (Hinton); "hard": the teacher's top
    class only. Adam with a cosine schedule, in `training.sgd_epoch`. Returns the last epoch's
    loss.
    """
    epochs = _capped_epochs(kd, epochs, len(inputs))
    generator = torch.Generator().manual_seed(kd.seed)
    xs = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32))
    teacher.eval()
    batch_loss = _batch_loss(student, teacher, xs, kd, generator)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    steps = epochs * max(1, -(-len(xs) // kd.batch_size))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    last = 0.0
    progress = Progress("distillation epochs", epochs)
    for epoch in range(epochs):
        progress.step(epoch, f"loss {last:.4f}")
        student.train()
        batches = shuffled_batches(len(xs), kd.batch_size, generator)
        running = sgd_epoch(optimizer, batches, batch_loss, RunningLoss(), schedule=schedule)
        last = running.total / len(xs)
    student.eval()
    return last


def _capped_epochs(kd: KDConfig, epochs: int, samples: int) -> int:
    """`epochs`, or fewer when epochs x samples would exceed kd-sample-budget."""
    if not kd.sample_budget or epochs * samples <= kd.sample_budget:
        return epochs
    capped = max(1, kd.sample_budget // samples)
    log.info(
        "distillation: %d epochs x %d samples exceed kd-sample-budget %d: %d epochs",
        epochs,
        samples,
        kd.sample_budget,
        capped,
    )
    return capped


def _batch_loss(
    student: nn.Module,
    teacher: nn.Module,
    xs: torch.Tensor,
    kd: KDConfig,
    generator: torch.Generator,
) -> Callable[[torch.Tensor], tuple[torch.Tensor, int]]:
    """The loss of one batch of pool indices, its views drawn from `generator` (kd_train's)."""
    t_target = kd.temperature if kd.labels == "soft" else 1.0
    fixed = None
    if kd.queries == "pool":  # the teacher answers once, for the pool's samples only
        with torch.no_grad():
            fixed = teacher_targets(teacher(xs), kd.temperature, kd.labels)

    def batch_loss(index: torch.Tensor) -> tuple[torch.Tensor, int]:
        if fixed is not None:
            batch = augment(xs[index], generator, 0.0, kd.noise, kd.shift)
            return soft_cross_entropy(student(batch), fixed[index], t_target), len(batch)
        batch = augment(xs[index], generator, kd.mixup, kd.noise, kd.shift)  # a new view
        with torch.no_grad():
            answer = teacher(batch)
        if kd.labels == "soft":
            return kd_loss(student(batch), answer, kd.temperature), len(batch)
        hard = teacher_targets(answer, 1.0, kd.labels)
        return soft_cross_entropy(student(batch), hard, 1.0), len(batch)

    return batch_loss


def teacher_targets(logits: torch.Tensor, temperature: float, labels: str) -> torch.Tensor:
    """What the student learns: tempered probabilities (soft) or the top class one-hot (hard)."""
    if labels == "hard":
        return F.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)
    return F.softmax(logits / temperature, dim=1)


def soft_cross_entropy(
    student_logits: torch.Tensor, probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Cross-entropy of the student at `temperature` against target probabilities, x T^2."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    return -(probs * log_p).sum(1).mean() * (temperature * temperature)


def augment(
    batch: torch.Tensor,
    generator: torch.Generator,
    mixup: float,
    noise: float,
    shift: int,
) -> torch.Tensor:
    """A new view of each sample: mixup with a random partner, a random shift, Gaussian noise.

    Every draw comes from `generator` (mixup's Beta(a, a) weights through a numpy generator
    seeded from it), so the views depend on the seed alone, not on the global RNG.
    """
    if mixup > 0:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        weights = np.random.default_rng(seed).beta(mixup, mixup, size=len(batch))
        lam = torch.from_numpy(weights.astype(np.float32)).view(-1, *([1] * (batch.dim() - 1)))
        partner = batch[torch.randperm(len(batch), generator=generator)]
        batch = lam * batch + (1 - lam) * partner
    if shift > 0:
        batch = random_shift(batch, shift, generator)
    if noise > 0:
        batch = batch + noise * torch.randn(batch.shape, generator=generator)
    return batch
