"""SecAgg+'s share graph (each node's neighbours on a shuffled ring) and the check of a node's keys."""

from __future__ import annotations

import random
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import bytes_to_public_key


def valid_keys(keys: list[Any], known: dict[int, list[bytes]]) -> bool:
    """Two distinct public keys on Flower's curve, neither one another node already sent.

    A key that loads but is on another curve (P-256, Ed25519) would make every neighbour's
    key agreement fail, and with it the round: it fails only the node that sent it.
    """
    if not all(isinstance(k, bytes) for k in keys) or keys[0] == keys[1]:
        return False
    taken = {k for pair in known.values() for k in pair}
    try:
        loaded = [bytes_to_public_key(k) for k in keys]
    except (ValueError, TypeError):
        return False
    on_curve = all(
        isinstance(k, ec.EllipticCurvePublicKey) and isinstance(k.curve, ec.SECP384R1)
        for k in loaded
    )
    return on_curve and not taken & set(keys)


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
