"""Simulated faults and attacks: which clients misbehave, and what a Byzantine update looks like.

Roles are pure functions of (seed, round, partition id), so the server can record them, the
clients can act on them, and a resumed run replays exactly the same faults.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from fedge.core.config import RunConfig


class SimulatedDropoutError(RuntimeError):
    """Raised by a client told to drop out of this round (the server sees an error reply)."""


@dataclass(frozen=True)
class Roles:
    """Who misbehaves in one round (partition ids)."""

    byzantine: frozenset[int]
    dropped: frozenset[int]
    stragglers: frozenset[int]


def _pick(count: int, clients: int, *seed: int) -> frozenset[int]:
    rng = np.random.default_rng([*seed])
    return frozenset(int(p) for p in rng.choice(clients, size=count, replace=False))


def _count(fraction: float, clients: int) -> int:
    return int(round(fraction * clients))


def byzantine_partitions(cfg: RunConfig) -> frozenset[int]:
    """The fixed set of attacking partitions for the whole run."""
    return _pick(_count(cfg.byzantine_fraction, cfg.clients), cfg.clients, cfg.seed, 0xB12)


def round_roles(cfg: RunConfig, server_round: int) -> Roles:
    """Attackers, drop-outs and stragglers of one round (drop-outs never also straggle)."""
    dropped = _pick(
        _count(cfg.dropout_fraction, cfg.clients), cfg.clients, cfg.seed, server_round, 0xD0
    )
    rest = sorted(set(range(cfg.clients)) - dropped)
    late = _count(cfg.straggler_fraction, cfg.clients)
    rng = np.random.default_rng([cfg.seed, server_round, 0x51])
    stragglers = frozenset(
        int(p) for p in rng.choice(rest, size=min(late, len(rest)), replace=False)
    )
    return Roles(byzantine_partitions(cfg), dropped, stragglers)


def straggler_delay(cfg: RunConfig) -> float:
    """Seconds a straggler waits before replying (by default just past the round timeout)."""
    return cfg.straggler_delay or cfg.round_timeout + 1.0


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Label-flip poisoning: class c becomes num_classes - 1 - c."""
    return (num_classes - 1 - y).astype(y.dtype)


def poison_update(
    cfg: RunConfig,
    start: dict[str, np.ndarray],
    trained: dict[str, np.ndarray],
    seed: int,
) -> OrderedDict[str, np.ndarray]:
    """What a Byzantine client sends instead of `trained` (label-flip poisons data, not this).

    sign-flip: start - scale x (trained - start); gaussian: start + N(0, scale^2) per weight.
    """
    rng = np.random.default_rng(seed)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, value in trained.items():
        if not np.issubdtype(value.dtype, np.floating):
            out[name] = value  # counters such as BatchNorm's num_batches_tracked
        elif cfg.byzantine_mode == "sign-flip":
            out[name] = (start[name] - cfg.byzantine_scale * (value - start[name])).astype(
                value.dtype
            )
        elif cfg.byzantine_mode == "gaussian":
            noise = rng.normal(0.0, cfg.byzantine_scale, size=value.shape)
            out[name] = (start[name] + noise).astype(value.dtype)
        else:
            out[name] = value
    return out
