"""Choice of the Flower aggregation strategy from the run config."""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from fedge.core.config import RunConfig


def make_strategy(cfg: RunConfig) -> FedAvg:
    """FedAvg, FedProx (clients add the proximal term) or FedAdam (server-side Adam).

    Every strategy samples all clients each round and needs all of them connected to start.
    """
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": cfg.clients,
        "min_evaluate_nodes": cfg.clients,
        "min_available_nodes": cfg.clients,
    }
    if cfg.strategy == "fedprox":
        return FedProx(proximal_mu=cfg.proximal_mu, **common)
    if cfg.strategy == "fedadam":
        return FedAdam(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    return FedAvg(**common)
