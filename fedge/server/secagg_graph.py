"""SecAgg+'s share graph (each node's neighbours on a shuffled ring) and the check of a node's keys."""

from __future__ import annotations

import random
from typing import Any

from flwr.supercore.primitives.asymmetric import bytes_to_public_key


def valid_keys(keys: list[Any], known: dict[int, list[bytes]]) -> bool:
    """Two distinct public keys that load, neither one another node already sent."""
    if not all(isinstance(k, bytes) for k in keys) or keys[0] == keys[1]:
        return False
    taken = {k for pair in known.values() for k in pair}
    try:
        for k in keys:
            bytes_to_public_key(k)
    except (ValueError, TypeError):
        return False
    return not taken & set(keys)


def share_ring(nodes: list[int], shares: int, rng: random.Random) -> dict[int, set[int]]:
    """SecAgg+'s graph: nodes on a shuffled ring, each with the `shares` nearest (itself too)."""
    order = list(nodes)
    rng.shuffle(order)
    half = shares // 2
    return {
        node: {order[(i + offset) % len(order)] for offset in range(-half, half + 1)}
        if shares < len(order)
        else set(order)
        for i, node in enumerate(order)
    }
