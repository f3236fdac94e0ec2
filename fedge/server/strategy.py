"""Choice of the Flower strategy (optimiser and aggregation rule) from the run config."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.serverapp.strategy import (
    Bulyan,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
)

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.sampling import train_size
from fedge.privacy.central import central_noise
from fedge.server import central_dp

# Strategy attributes that carry state from round to round (FedAdam's moments).
STATEFUL_ATTRIBUTES = ("m_t", "v_t")


def make_strategy(cfg: RunConfig, phase: str = "teacher") -> Any:
    """The Flower strategy for `strategy` x `aggregation` in `phase` (teacher | student rounds).

    fedprox differs from fedavg only on the client (the proximal term), so it combines with
    every robust aggregation; fedadam keeps server-side moments and only aggregates by mean.
    With central DP the mean is unweighted and wrapped in Flower's DP wrapper (clipping and
    noise). Every round samples all connected clients. The run waits for `clients` nodes once, before
    round 1, and for `min-clients` before each round, each with a timeout
    (training_loop.wait_for_nodes); the minimums here are 1 because Flower's own wait has none.
    """
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    if cfg.aggregation == "median":
        return FedMedian(**common)
    if cfg.aggregation == "trimmed-mean":
        return FedTrimmedAvg(beta=cfg.trim_beta, **common)
    if cfg.aggregation == "krum":
        return Krum(num_malicious_nodes=cfg.num_malicious, **common)
    if cfg.aggregation == "multi-krum":
        keep = max(1, train_size(cfg) - cfg.num_malicious)
        return MultiKrum(num_malicious_nodes=cfg.num_malicious, num_nodes_to_select=keep, **common)
    if cfg.aggregation == "bulyan":
        return Bulyan(num_malicious_nodes=cfg.num_malicious, **common)
    if cfg.dp == "central":  # an unweighted mean: the noise is calibrated to clip / clients
        common["weighted_by_key"] = m.UNIT_WEIGHT
    base = (
        FedProx(proximal_mu=cfg.proximal_mu, **common)
        if cfg.strategy == "fedprox"
        else FedAvg(**common)
    )
    if cfg.dp == "central":
        return central_dp.wrap(base, cfg, central_noise(cfg, phase))
    return base


def strategy_state(strategy: FedAvg) -> dict[str, dict[str, np.ndarray]]:
    """The strategy's round-to-round state (empty for stateless aggregation rules)."""
    state = {}
    for name in STATEFUL_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if value:
            state[name] = {k: np.asarray(v) for k, v in value.items()}
    return state


def restore_strategy_state(strategy: FedAvg, state: dict[str, dict[str, np.ndarray]]) -> None:
    """Inverse of strategy_state."""
    for name, value in state.items():
        if name not in STATEFUL_ATTRIBUTES or not hasattr(strategy, name):
            raise ValueError(f"checkpoint holds state {name!r} this strategy does not have")
        setattr(strategy, name, dict(value))
