"""The run's federated training replayed without Flower (FedAvg rounds, with its DP), for the audit.

Candidates are every client record (members: the training splits) and the central test split.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedge.core.augment import teacher_view
from fedge.core.config import RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.models import build_teacher
from fedge.core.partition import Federation, build_federation, client_indices
from fedge.core.training import (
    client_seed,
    get_weights,
    kd_local_train,
    predict_logits,
    set_weights,
    train,
)
from fedge.pipeline.chain.federate import FederatedTrainer
from fedge.pipeline.outputs.rows import StudentRounds
from fedge.privacy import central, dp_sgd
from fedge.privacy.fault import applied_noise


@dataclass(frozen=True)
class Candidates:
    """The records the attack scores: preprocessed inputs, labels, target membership."""

    x: np.ndarray
    y: np.ndarray
    members: np.ndarray  # in the target's training data
    owner: np.ndarray  # client partition of each record; -1: the central test split


def candidates(fed: Federation, cfg: RunConfig) -> Candidates:
    """All client records (members: the training splits) and the central test split."""
    members = np.zeros(len(fed.client_y), dtype=bool)
    owner = np.full(len(fed.client_y), -1)
    for pid in range(cfg.clients):
        train_idx, test_idx = client_indices(fed, pid, cfg)
        members[train_idx] = True
        owner[np.concatenate([train_idx, test_idx])] = pid
    test = fed.server.test
    return Candidates(
        x=np.concatenate([fed.client_x, test.x]),
        y=np.concatenate([fed.client_y, test.y]),
        members=np.concatenate([members, np.zeros(len(test.y), dtype=bool)]),
        owner=np.concatenate([owner, np.full(len(test.y), -1)]),
    )


def replay_training(
    cfg: RunConfig, client_sets: list[tuple[np.ndarray, np.ndarray]], seed: int
) -> nn.Module:
    """The run's federated training without Flower: FedAvg rounds over `client_sets`.

    Central DP clips each update and adds the wrapper's noise; local DP trains with DP-SGD.
    """
    fed = build_federation(cfg)
    shape, classes = fed.dataset.preprocessing.input_shape, fed.dataset.num_classes
    torch.manual_seed(seed)
    model = build_teacher(shape, classes, seed, cfg.teacher)
    server = ServerMean(cfg, "teacher", np.random.default_rng(seed))
    global_w: dict[str, np.ndarray] = dict(get_weights(model))
    for server_round in range(1, cfg.rounds + 1):
        fit = _teacher_fit(cfg, seed, server_round)
        global_w = server.step(global_w, list(local_models(model, global_w, client_sets, fit)))
    set_weights(model, global_w)
    return model.eval()


class ServerMean:
    """The server's step of a round, as the run's strategy takes it.

    FedAvg weighted by samples, or central DP's unweighted mean of clipped updates plus the
    wrapper's noise (the noise of `phase`: teacher | student).
    """

    def __init__(self, cfg: RunConfig, phase: str, rng: np.random.Generator) -> None:
        self.cfg, self.rng, self.clip = cfg, rng, cfg.dp_clip
        central_dp = cfg.dp == "central"  # the noise the run applied (the test-only fault too)
        self.noise = applied_noise(central.central_noise(cfg, phase)) if central_dp else 0.0
        adaptive = cfg.dp_clip_mode == "adaptive"
        self.count_std = central.count_noise(cfg, self.noise) if adaptive else None

    def step(
        self, global_w: dict[str, np.ndarray], trained: list[tuple[dict[str, np.ndarray], int]]
    ) -> dict[str, np.ndarray]:
        """The next global weights from each client's (weights, sample count)."""
        cfg, dp = self.cfg, self.cfg.dp == "central"
        updates = [{k: new[k] - global_w[k] for k in global_w} for new, _ in trained]
        weights = [1.0 if dp else float(count) for _, count in trained]
        if dp:
            clipped = sum(_norm(u) > self.clip for u in updates)
            updates = [_clip(u, self.clip) for u in updates]
        total = sum(weights)
        mean = {k: sum(w * u[k] for w, u in zip(weights, updates, strict=True)) / total
                for k in global_w}  # fmt: skip
        if dp:
            next_clip, on_model = self.clip, self.noise
            if self.count_std is not None:  # as central's wrappers: count, noise, then the norm
                fraction = float(self.rng.normal(clipped, self.count_std)) / len(updates)
                next_clip = central.next_clipping_norm(self.clip, fraction, cfg)
                on_model = central.model_noise(self.noise, self.count_std)
            std = on_model * self.clip / cfg.clients
            mean = {
                k: v + self.rng.normal(0, std, v.shape).astype(v.dtype) for k, v in mean.items()
            }
            self.clip = next_clip
        return {k: (global_w[k] + mean[k]).astype(global_w[k].dtype) for k in global_w}


LocalFit = Callable[[nn.Module, int, np.ndarray, np.ndarray], None]


def local_models(
    model: nn.Module,
    global_w: dict[str, np.ndarray],
    client_sets: list[tuple[np.ndarray, np.ndarray]],
    fit: LocalFit,
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Each client with data: a copy of the global model trained by `fit`, and its sample count."""
    for pid, (x, y) in enumerate(client_sets):
        if len(y) == 0:
            continue
        local = copy.deepcopy(model)
        set_weights(local, global_w)
        fit(local, pid, x, y)
        yield dict(get_weights(local)), len(y)


def _teacher_fit(cfg: RunConfig, seed: int, server_round: int) -> LocalFit:
    """One client's training in a teacher round, as the ClientApp does it (DP-SGD under local DP)."""

    def fit(local: nn.Module, pid: int, x: np.ndarray, y: np.ndarray) -> None:
        local_seed = client_seed(seed, server_round, pid)
        if cfg.dp == "local":
            dp_sgd.dp_sgd_train(
                local, x, y, noise=dp_sgd.plan(len(y), cfg).noise, epochs=cfg.local_epochs,
                lr=cfg.lr, batch_size=cfg.batch_size, clip=cfg.dp_clip, seed=local_seed,
            )  # fmt: skip
        else:
            mu = cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0
            train(local, x, y, epochs=cfg.local_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                  seed=local_seed, proximal_mu=mu, sample_budget=cfg.local_sample_budget,
                  view=teacher_view(cfg.augment))  # fmt: skip

    return fit


def _norm(update: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in update.values())))


def _clip(update: dict[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    scale = min(1.0, norm / max(_norm(update), 1e-12))
    return {k: v * scale for k, v in update.items()}


def student_replay(
    cfg: RunConfig, client_sets: list[tuple[np.ndarray, np.ndarray]], teacher: nn.Module
) -> FederatedTrainer:
    """The run's student rounds without Flower: each client's KD + label training, then the mean.

    Clients label their own samples with `teacher`, seed as the ClientApp does (rounds are
    numbered after the teacher's); the server's step is the run's (ServerMean, with its DP);
    under local DP the clients train with DP-SGD at the student phase's noise.
    """

    def train(model: nn.Module, config: FederateConfig) -> tuple[nn.Module, StudentRounds]:
        empty = np.zeros((0, 1), dtype=np.float32)
        logits = [predict_logits(teacher, x) if len(x) else empty for x, _ in client_sets]
        server = ServerMean(cfg, "student", np.random.default_rng(cfg.seed + 1))
        global_w = dict(get_weights(model))
        for index in range(1, config.rounds + 1):
            fit = _student_fit(cfg, config, logits, cfg.rounds + index)
            global_w = server.step(global_w, list(local_models(model, global_w, client_sets, fit)))
        set_weights(model, global_w)
        return model.eval(), StudentRounds([], [], 0, replayed_from="the audit's replay")

    return train


def _student_fit(
    cfg: RunConfig, config: FederateConfig, logits: list[np.ndarray], server_round: int
) -> LocalFit:
    """One client's training in a student round, as the ClientApp does it."""

    def fit(local: nn.Module, pid: int, x: np.ndarray, y: np.ndarray) -> None:
        seed = client_seed(cfg.seed, server_round, pid)
        if cfg.dp == "local":
            dp_sgd.dp_sgd_train(
                local, x, y, noise=dp_sgd.plan(len(y), cfg).student_noise, epochs=config.epochs,
                lr=config.lr, batch_size=config.batch_size, clip=cfg.dp_clip, seed=seed,
                extra=logits[pid], objective=dp_sgd.distillation(config),
            )  # fmt: skip
            return
        kd_local_train(
            local, x, y, logits[pid], epochs=config.epochs, lr=config.lr,
            batch_size=config.batch_size, seed=seed, temperature=config.temperature,
            alpha=config.alpha, soft=config.soft, sample_budget=config.sample_budget,
        )  # fmt: skip

    return fit
