"""Client sampling: which partitions train in a round, as a pure function of (seed, round).

Sampling is by partition id, not node id, so a resumed run (whose simulated nodes get new
ids) trains the same clients in the same rounds. Without central DP a round samples a fixed
number of clients uniformly without replacement (Flower's fraction-train / min-train-clients);
with central DP each client joins independently with probability fraction-train (Poisson
sampling, from a seed only the server knows), the mechanism Opacus' subsampled-Gaussian
accountant analyses.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the rules in config_rules use these functions while a config is built
    from fedge.core.config import RunConfig

TRAIN_STREAM, EVALUATE_STREAM = 0x5A, 0xE7


def samples_clients(cfg: RunConfig) -> bool:
    """Whether some rounds leave clients out (fraction-train < 1)."""
    return cfg.fraction_train < 1.0


def poisson(cfg: RunConfig) -> bool:
    """Central DP samples each client independently (the accountant's mechanism)."""
    return cfg.dp == "central" and samples_clients(cfg)


def train_size(cfg: RunConfig) -> int:
    """Clients per round (the expected number under Poisson sampling)."""
    if poisson(cfg):
        return max(1, round(cfg.fraction_train * cfg.clients))
    wanted = max(1, math.ceil(cfg.fraction_train * cfg.clients - 1e-9))
    return min(cfg.clients, max(wanted, cfg.min_train_clients))


def sample_rate(cfg: RunConfig) -> float:
    """The accountant's per-round sample rate of one client."""
    return cfg.fraction_train if poisson(cfg) else 1.0


def train_sample(cfg: RunConfig, server_round: int, secret: int | None = None) -> list[int]:
    """Sorted partition ids that train in `server_round`.

    Poisson sampling (central DP) draws from `secret`, which only the server knows: the
    accountant's amplification assumes nobody can tell who was sampled, and every client
    knows the run's seed.
    """
    if not samples_clients(cfg):
        return list(range(cfg.clients))
    if poisson(cfg):
        if secret is None:
            raise ValueError("central DP client sampling needs the server's secret seed")
        secret_rng = np.random.default_rng([secret, server_round, TRAIN_STREAM])
        draws = secret_rng.random(cfg.clients)
        return [int(p) for p in np.flatnonzero(draws < cfg.fraction_train)]
    rng = np.random.default_rng([cfg.seed, server_round, TRAIN_STREAM])
    picked = rng.choice(cfg.clients, size=train_size(cfg), replace=False)
    return sorted(int(p) for p in picked)


def evaluate_sample(cfg: RunConfig) -> list[int]:
    """Sorted partition ids of the final federated evaluation (fraction-evaluate of them)."""
    if cfg.fraction_evaluate >= 1.0:
        return list(range(cfg.clients))
    size = max(1, math.ceil(cfg.fraction_evaluate * cfg.clients - 1e-9))
    rng = np.random.default_rng([cfg.seed, EVALUATE_STREAM])
    return sorted(int(p) for p in rng.choice(cfg.clients, size=size, replace=False))
