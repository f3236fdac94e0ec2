"""Local (sample-level) DP: each client trains with DP-SGD (Opacus) and accounts for its own data."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedge.core.config import RunConfig
from fedge.core.training import RunningLoss, sgd_epoch
from fedge.privacy.accountant import epsilon, noise_for_epsilon


@dataclass(frozen=True)
class LocalPlan:
    """One client's DP-SGD schedule: Poisson sample rate, steps per round, noise."""

    sample_rate: float
    steps_per_round: int
    noise: float

    def epsilon_after(self, rounds: int, cfg: RunConfig) -> float:
        """Epsilon of this client's data after `rounds` rounds (as if it trained in all)."""
        steps = rounds * self.steps_per_round
        return epsilon(self.noise, self.sample_rate, steps, cfg.dp_delta, cfg.dp_accountant)


def plan(num_examples: int, cfg: RunConfig) -> LocalPlan:
    """The schedule for a client holding `num_examples` records (dp-epsilon spent by the end)."""
    batches = max(1, math.ceil(num_examples / cfg.batch_size))
    sample_rate, steps_per_round = 1.0 / batches, cfg.local_epochs * batches
    noise = cfg.dp_noise
    if cfg.dp_epsilon > 0:
        noise = noise_for_epsilon(
            cfg.dp_epsilon,
            sample_rate,
            cfg.rounds * steps_per_round,
            cfg.dp_delta,
            cfg.dp_accountant,
        )
    return LocalPlan(sample_rate, steps_per_round, noise)


def dp_sgd_train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    schedule: LocalPlan,
    epochs: int,
    lr: float,
    batch_size: int,
    clip: float,
    seed: int,
) -> float:
    """DP-SGD (per-sample clipping to `clip`, Gaussian noise, Poisson batches); mean loss."""
    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = DataLoader(data, batch_size=batch_size, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    private, optimizer, loader = PrivacyEngine().make_private(
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=schedule.noise,
        max_grad_norm=clip,
        poisson_sampling=True,
        noise_generator=torch.Generator().manual_seed(seed + 1),
    )

    def batch_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int] | None:
        xb, yb = batch
        if len(yb) == 0:  # Poisson sampling can draw an empty batch: no step, still accounted
            return None
        return F.cross_entropy(private(xb), yb), len(yb)

    private.train()
    running = RunningLoss()
    for _ in range(epochs):
        sgd_epoch(optimizer, loader, batch_loss, running)
    private.eval()
    return running.mean
