"""Central (client-level) DP-FedAvg: Flower's fixed and adaptive clipping wrappers, honest accounting."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from flwr.app import Message
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from fedge.core.config import ConfigError, RunConfig
from fedge.privacy.accountant import epsilon_of_history, noise_for_epsilon


def central_noise(cfg: RunConfig) -> float:
    """The noise multiplier of every round: dp-noise, or the one dp-epsilon asks for.

    Every round aggregates all clients (no sampling amplification), so `rounds` Gaussian
    releases at sample rate 1 must spend at most dp-epsilon.
    """
    noise = cfg.dp_noise
    if cfg.dp_epsilon > 0:
        noise = noise_for_epsilon(cfg.dp_epsilon, 1.0, cfg.rounds, cfg.dp_delta, cfg.dp_accountant)
    if cfg.dp_clip_mode == "adaptive" and noise > 0 and noise >= 2 * count_noise(cfg, noise):
        raise ConfigError(
            f"dp-count-noise={cfg.dp_count_noise} is too small for noise multiplier {noise:.3f}: "
            f"adaptive clipping needs dp-count-noise > noise / 2 = {noise / 2:.3f} (or 0: auto)"
        )
    return noise


def count_noise(cfg: RunConfig, noise: float) -> float:
    """Adaptive clipping: std of the noise on the count of clipped updates (sigma_b).

    dp-count-noise, or max(clients / 20, noise): Andrew et al.'s clients/20 where that leaves
    the model noise finite, else one that adds about 15 % to the model noise.
    """
    if cfg.dp_count_noise > 0:
        return cfg.dp_count_noise
    return max(cfg.clients / 20, noise)


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


class _AndrewClipping:
    """Two corrections to Flower 1.41's adaptive clipping wrappers (mixed in before them).

    1. Direction: Flower moves the norm by exp(-lr x (clipped share - quantile)), so a round in
       which most updates were clipped shrinks the norm further and it collapses towards 0.
       Andrew et al. move it by exp(-lr x (unclipped share - quantile)): here `quantile` is the
       share of updates the norm should leave unclipped (dp-clip-quantile).
    2. Order: Flower updates the norm before it noises the aggregate, so a round whose updates
       were clipped at C gets noise calibrated to the new norm; when the norm shrank, that noise
       is too small for the round's sensitivity. Here the new norm takes effect after the round.
    """

    clipping_norm: float
    cfg: RunConfig
    _next_norm: float | None = None

    def _geometric_update(self, clipped_fraction: float) -> None:
        self._next_norm = next_clipping_norm(self.clipping_norm, clipped_fraction, self.cfg)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        """Flower's aggregation (clip, count, noise at this round's norm), then the new norm."""
        self._next_norm = None
        result = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if self._next_norm is not None:
            self.clipping_norm = self._next_norm
        return result


class ServerSideAdaptiveClipping(_AndrewClipping, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping with the corrections of _AndrewClipping."""


class ClientSideAdaptiveClipping(_AndrewClipping, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping with the corrections of _AndrewClipping."""


def wrap(strategy: Any, cfg: RunConfig, noise: float) -> Any:
    """The strategy inside Flower's DP wrapper: clip each update to dp-clip, add Gaussian noise.

    Noise std on the mean is noise x dp-clip / clients. Clipping happens on the server or, with
    dp-clipping client, in each client's `fixedclipping_mod` before the update leaves the node.
    """
    if cfg.dp_clip_mode == "adaptive":
        adaptive = (
            ServerSideAdaptiveClipping
            if cfg.dp_clipping == "server"
            else ClientSideAdaptiveClipping
        )
        wrapper = adaptive(
            strategy,
            noise,
            num_sampled_clients=cfg.clients,
            initial_clipping_norm=cfg.dp_clip,
            target_clipped_quantile=cfg.dp_clip_quantile,
            clip_norm_lr=cfg.dp_clip_lr,
            clipped_count_stddev=count_noise(cfg, noise),
        )
        wrapper.cfg = cfg  # the update rule reads dp-clip-lr and dp-clip-quantile from it
        return wrapper
    fixed = (
        DifferentialPrivacyServerSideFixedClipping
        if cfg.dp_clipping == "server"
        else DifferentialPrivacyClientSideFixedClipping
    )
    return fixed(strategy, noise, cfg.dp_clip, num_sampled_clients=cfg.clients)


def effective_noise(
    noise: float, aggregated: int, clients: int, count_std: float | None = None
) -> float:
    """The noise a round really gave one client's update.

    The wrapper's noise is calibrated to a mean over `clients` updates; a mean over fewer has
    a larger sensitivity (clip / aggregated), so the same noise protects less. With adaptive
    clipping (`count_std`: the clipped-count noise) only the model part shrinks; the count's
    sensitivity does not depend on how many replied.
    """
    share = min(aggregated, clients) / clients
    if count_std is None:
        return noise * share
    on_model = model_noise(noise, count_std) * share
    if on_model <= 0:
        return 0.0
    return float((on_model**-2 + (2 * count_std) ** -2) ** -0.5)


def central_epsilon(effective: list[float], cfg: RunConfig) -> float:
    """Epsilon spent by the released rounds, each at its effective noise (sample rate 1)."""
    return epsilon_of_history([(z, 1.0, 1) for z in effective], cfg.dp_delta, cfg.dp_accountant)
