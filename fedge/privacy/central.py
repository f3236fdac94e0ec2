"""Central (client-level) DP-FedAvg: noise, adaptive clipping's norm rule, honest accounting.

The Flower wrappers that apply these live in fedge.server.central_dp (the only part that needs flwr).
"""

from __future__ import annotations

import math

from fedge.core.config import ConfigError, RunConfig
from fedge.core.sampling import sample_rate, train_size
from fedge.privacy.accountant import epsilon_of_history
from fedge.privacy.budget import phase_noise, student_trainings


def central_noise(cfg: RunConfig, phase: str = "teacher") -> float:
    """The noise multiplier of each round of `phase` (teacher | student): dp-noise, or dp-epsilon's.

    The teacher's `rounds` and every student's `student-rounds` Gaussian releases at the
    client sample rate (1 without sampling; fraction-train under Poisson sampling, which
    amplifies privacy) must spend at most dp-epsilon together (fedge.privacy.budget).
    """
    steps = student_trainings(cfg) * cfg.student_rounds
    noises = phase_noise(cfg, sample_rate(cfg), cfg.rounds, steps)
    noise = noises.student if phase == "student" else noises.teacher
    if cfg.dp_clip_mode == "adaptive" and noise > 0 and noise >= 2 * count_noise(cfg, noise):
        raise ConfigError(
            f"dp-count-noise={cfg.dp_count_noise} is too small for noise multiplier {noise:.3f}: "
            f"adaptive clipping needs dp-count-noise > noise / 2 = {noise / 2:.3f} (or 0: auto)"
        )
    return noise


def count_noise(cfg: RunConfig, noise: float) -> float:
    """Adaptive clipping: std of the noise on the count of clipped updates (sigma_b).

    dp-count-noise, or max(clients per round / 20, noise): Andrew et al.'s clients/20 where
    that leaves the model noise finite, else one that adds about 15 % to the model noise.
    """
    if cfg.dp_count_noise > 0:
        return cfg.dp_count_noise
    return max(train_size(cfg) / 20, noise)


def model_noise(noise: float, count_std: float) -> float:
    """Adaptive clipping: the noise multiplier Flower's adaptive wrappers put on the model.

    Model and count together then give the privacy of one Gaussian release at `noise`
    (Andrew et al. 2021, Theorem 1).
    """
    if noise <= 0:
        return 0.0
    return float((noise**-2 - (2 * count_std) ** -2) ** -0.5)


def next_clipping_norm(norm: float, clipped_fraction: float, cfg: RunConfig) -> float:
    """Andrew et al.'s geometric step: exp(-dp-clip-lr x (unclipped share - dp-clip-quantile))."""
    unclipped = 1.0 - clipped_fraction
    return norm * math.exp(-cfg.dp_clip_lr * (unclipped - cfg.dp_clip_quantile))


def central_epsilon(effective: list[float], cfg: RunConfig) -> float:
    """Epsilon spent by the released rounds, each at its effective noise and the sample rate."""
    rate = sample_rate(cfg)
    return epsilon_of_history([(z, rate, 1) for z in effective], cfg.dp_delta, cfg.dp_accountant)
