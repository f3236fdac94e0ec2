"""Central (client-level) DP-FedAvg: Flower's fixed-clipping wrappers, and honest accounting."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from fedge.core.config import RunConfig
from fedge.privacy.accountant import epsilon_of_history, noise_for_epsilon


def central_noise(cfg: RunConfig) -> float:
    """The noise multiplier of every round: dp-noise, or the one dp-epsilon asks for.

    Every round aggregates all clients (no sampling amplification), so `rounds` Gaussian
    releases at sample rate 1 must spend at most dp-epsilon.
    """
    if cfg.dp_epsilon <= 0:
        return cfg.dp_noise
    return noise_for_epsilon(cfg.dp_epsilon, 1.0, cfg.rounds, cfg.dp_delta, cfg.dp_accountant)


def wrap(strategy: Any, cfg: RunConfig, noise: float) -> Any:
    """The strategy inside Flower's DP wrapper: clip each update to dp-clip, add Gaussian noise.

    Noise std on the mean is noise x dp-clip / clients. Clipping happens on the server or, with
    dp-clipping client, in each client's `fixedclipping_mod` before the update leaves the node.
    """
    wrapper = (
        DifferentialPrivacyServerSideFixedClipping
        if cfg.dp_clipping == "server"
        else DifferentialPrivacyClientSideFixedClipping
    )
    return wrapper(strategy, noise, cfg.dp_clip, num_sampled_clients=cfg.clients)


def effective_noise(noise: float, aggregated: int, clients: int) -> float:
    """The noise a round really gave one client's update.

    The wrapper's noise is calibrated to a mean over `clients` updates; a mean over fewer has
    a larger sensitivity (clip / aggregated), so the same noise protects less.
    """
    return noise * min(aggregated, clients) / clients


def central_epsilon(effective: list[float], cfg: RunConfig) -> float:
    """Epsilon spent by the released rounds, each at its effective noise (sample rate 1)."""
    return epsilon_of_history([(z, 1.0, 1) for z in effective], cfg.dp_delta, cfg.dp_accountant)
