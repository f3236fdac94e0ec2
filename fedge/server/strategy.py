"""Choice of the Flower aggregation strategy from the run config."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedge.core.config import RunConfig


def make_strategy(cfg: RunConfig) -> FedAvg:
    """FedAvg, FedProx (clients add the proximal term) or FedAdam (server-side Adam).

    Every round samples all connected clients. The run waits for `clients` nodes once, before
    round 1 (training_loop.wait_for_nodes, with a timeout); after that a node that dies only
    drops out, so the minimums here are 1: Flower's own wait for a minimum has no timeout.
    """
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    return FedAvg(**common)
