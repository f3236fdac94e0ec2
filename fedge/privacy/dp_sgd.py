"""Local (sample-level) DP: each client trains with DP-SGD (Opacus) and accounts for its own data.

A client's records are released by the teacher's rounds and, when the student learns on the
clients, by the student's rounds (DP-SGD on the distillation loss): one schedule covers both,
and dp-epsilon bounds their composition (fedge.privacy.budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from fedge.core.config import RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.training import RunningLoss, kd_objective, sgd_epoch
from fedge.privacy.accountant import epsilon_of_history
from fedge.privacy.budget import phase_noise, student_trainings
from fedge.privacy.fault import applied_noise

# (logits, labels, the batch's extra tensor or None) -> mean loss over the batch
Objective = Callable[[Tensor, Tensor, Tensor | None], Tensor]


@dataclass(frozen=True)
class LocalPlan:
    """One client's DP-SGD schedule: Poisson sample rate, steps per round and noise per phase."""

    sample_rate: float
    steps_per_round: int  # a teacher round
    noise: float  # the teacher's steps
    student_steps_per_round: int = 0
    student_noise: float = 0.0  # 0.0: the run has no student rounds on the clients

    def epsilon_after(self, rounds: int, cfg: RunConfig, student_rounds: int = 0) -> float:
        """Epsilon of this client's data after `rounds` teacher and `student_rounds` student rounds.

        As if it trained in all of them (an upper bound).
        """
        history = [
            (self.noise, self.sample_rate, rounds * self.steps_per_round),
            (self.student_noise, self.sample_rate, student_rounds * self.student_steps_per_round),
        ]
        return epsilon_of_history(history, cfg.dp_delta, cfg.dp_accountant)


def plan(num_examples: int, cfg: RunConfig) -> LocalPlan:
    """The schedule for a client holding `num_examples` records (dp-epsilon spent by the end)."""
    batches = max(1, math.ceil(num_examples / cfg.batch_size))
    sample_rate = 1.0 / batches
    teacher, student = cfg.local_epochs * batches, cfg.student_epochs * batches
    student_steps = student_trainings(cfg) * cfg.student_rounds * student
    noise = phase_noise(cfg, sample_rate, cfg.rounds * teacher, student_steps)
    return LocalPlan(sample_rate, teacher, noise.teacher, student, noise.student)


def cross_entropy(logits: Tensor, labels: Tensor, extra: Tensor | None) -> Tensor:
    """Plain training's objective (the teacher's rounds)."""
    return F.cross_entropy(logits, labels)


def distillation(stage: FederateConfig) -> Objective:
    """Federated distillation's objective with the teacher's logits as the batch's extra tensor."""

    def objective(logits: Tensor, labels: Tensor, teacher: Tensor | None) -> Tensor:
        if teacher is None:
            raise ValueError("distillation needs the teacher's logits of every record")
        return kd_objective(logits, labels, teacher, stage.temperature, stage.alpha, stage.soft)

    return objective


def dp_sgd_train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    noise: float,
    epochs: int,
    lr: float,
    batch_size: int,
    clip: float,
    seed: int,
    extra: np.ndarray | None = None,
    objective: Objective = cross_entropy,
) -> float:
    """DP-SGD (per-sample clipping to `clip`, Gaussian noise, Poisson batches); mean loss.

    `extra`: one more per-record array batched with x and y (the teacher's logits of
    federated distillation), given to `objective`.
    """
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    tensors = [torch.from_numpy(x), torch.from_numpy(y)]
    if extra is not None:
        tensors.append(torch.from_numpy(np.ascontiguousarray(extra, dtype=np.float32)))
    loader = DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    private, optimizer, loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=applied_noise(noise),  # as calibrated, except under the test fault
        max_grad_norm=clip,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )

    def batch_loss(batch: list[torch.Tensor]) -> tuple[torch.Tensor, int] | None:
        xb, yb = batch[0], batch[1]
        if len(yb) == 0:  # Poisson sampling can draw an empty batch: no step, still accounted
            return None
        return objective(private(xb), yb, batch[2] if len(batch) > 2 else None), len(yb)

    private.train()
    running = RunningLoss()
    for _ in range(epochs):
        sgd_epoch(optimizer, loader, batch_loss, running)
    private.eval()
    return running.mean
