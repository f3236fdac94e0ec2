"""Server side of compressed training traffic: encode the downlink, decode every update.

Replies are decoded into ordinary full weights before validation, so validation, robust rules
and DP wrappers see what they always see; a reply that does not decode is rejected like any
malformed update. Every update is applied to the server's own model (not to the compressed
copy the client trained from), so what the downlink compression leaves out of one round is
still in the next round's model: server-side error feedback (DoubleSqueeze, Tang et al. 2019).

`downlink-compression delta` keeps one shared *view*: the model every node that took the last
chain message holds. Nodes that hold it get only the coded change from it to the server's
model; the rest get the model in int8. When fewer than half of a round's nodes hold the view
(sampling, failures), the chain starts anew: everyone gets the int8 model, which becomes the
view, so nodes that fell off rejoin. Nodes and server add the same decoded arrays in the
same float32 operations, so their views stay bit-identical.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.common.serde import message_to_proto

from fedge.core import codec
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import record_to_weights, weights_to_record, with_arrays
from fedge.server.replies import BadReplyError, arrays_payload, partition_of

DOWNLINK = codec.Codec("int8", stochastic=False)


@dataclass
class DownlinkChain:
    """The shared view of delta mode: its arrays, its id, the nodes that hold it."""

    view: dict[str, np.ndarray] | None = None
    view_id: int = 0
    holders: set[int] = field(default_factory=set)
    sent: set[int] = field(default_factory=set)  # this round's chain messages (their nodes)


def encode_downlink(
    cfg: RunConfig, messages: list[Message], arrays: ArrayRecord, chain: DownlinkChain
) -> None:
    """Put the model, coded as `downlink-compression` asks, into every message."""
    if cfg.downlink_compression == "none":
        return
    weights = record_to_weights(arrays)
    int8 = weights_to_record(codec.encode(weights, DOWNLINK, np.random.default_rng(0)))
    if cfg.downlink_compression == "int8":
        for msg in messages:  # Flower's strategies give every message the same RecordDict
            msg.content = with_arrays(msg.content, int8)
        return
    targets = {msg.metadata.dst_node_id for msg in messages}
    holders = chain.holders & targets if chain.view is not None else set()
    if 2 * len(holders) < len(targets):  # most would get int8 anyway: everyone starts anew
        holders = set()
    new_id = secrets.randbits(62) + 1  # unique per run and round: a stale view never matches
    full = _downlink(m.DOWNLINK_FULL, 0, 0)
    if holders:
        assert chain.view is not None
        change = {
            k: w - chain.view[k] if np.issubdtype(w.dtype, np.floating) else w
            for k, w in weights.items()
        }
        encoded, decoded = codec.roundtrip(change, codec.delta_codec(cfg), np.random.default_rng(0))
        chained = (weights_to_record(encoded), _downlink(m.DOWNLINK_DELTA, new_id, chain.view_id))
        chain.view = codec.advance(chain.view, decoded)
    else:  # nobody holds the view: everyone starts a new one from the int8 model
        holders = targets
        chained = (int8, _downlink(m.DOWNLINK_FULL, new_id, 0))
        chain.view = codec.decode_int8(record_to_weights(int8))
    chain.view_id, chain.sent = new_id, holders
    for msg in messages:
        record, how = chained if msg.metadata.dst_node_id in holders else (int8, full)
        msg.content = with_arrays(msg.content, record)
        msg.content.config_records[m.DOWNLINK] = how


def _downlink(kind: str, view: int, base: int) -> ConfigRecord:
    return ConfigRecord({"kind": kind, "view": view, "base": base})


def settle_chain(
    chain: DownlinkChain, replies: dict[int, Message | None], rejected: set[int]
) -> None:
    """After a round: the view's holders are the chain's nodes whose update was accepted.

    A node that failed, or whose update was rejected (a view that diverged from the server's
    trains from the wrong model), gets the full int8 model next round: it is re-synced.
    """
    chain.holders = {
        n
        for n in chain.sent
        if (r := replies.get(n)) is not None and not r.has_error() and n not in rejected
    }
    chain.sent = set()


def decode_updates(
    cfg: RunConfig, replies: dict[int, Message], base: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Rewrite each reply's arrays as `base` + its update, in place; rejection rows for the rest.

    A reply whose arrays do not decode to exactly the model's keys, shapes and dtypes is taken
    out of `replies` and rejected with the reason; nothing a node sends is broadcast.
    """
    if cfg.update_compression == "none" and cfg.downlink_compression != "int8":
        return []  # the arrays are the model: validation checks them as they are
    sent = None
    if cfg.update_compression == "none":  # trained from the int8 model: move onto base
        sent = codec.decode_int8(codec.encode(base, DOWNLINK, np.random.default_rng(0)))
    rejected = []
    for node_id, reply in list(replies.items()):
        try:
            moved = _onto_base(cfg, reply, base, sent)
        except (BadReplyError, KeyError, ValueError, TypeError) as err:
            del replies[node_id]
            reason = f"the update does not decode: {err}"
            rejected.append(
                {"node_id": node_id, "partition_id": partition_of(reply), "reason": reason}
            )
            continue
        reply.content = with_arrays(reply.content, weights_to_record(moved))
    return rejected


def _onto_base(
    cfg: RunConfig,
    reply: Message,
    base: dict[str, np.ndarray],
    sent: dict[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """The model a reply's update makes of `base` (ValueError/BadReplyError if it does not fit).

    `sent`: the int8 model the clients trained from (int8 downlink, uncompressed updates).
    """
    arrays = arrays_payload(reply, m.ARRAYS)
    if sent is not None:
        if set(arrays) != set(base):
            raise ValueError(f"keys {sorted(arrays)} are not the model's {sorted(base)}")
        for key, value in arrays.items():
            if value.shape != base[key].shape or value.dtype != base[key].dtype:
                raise ValueError(f"{key}: {value.dtype} {value.shape}, expected the model's")
        delta = {k: _minus(arrays[k], sent[k]) for k in base}
    else:
        shapes = {k: tuple(v.shape) for k, v in base.items()}
        dtypes = {k: v.dtype for k, v in base.items()}
        delta = codec.decode(arrays, shapes, codec.of_run(cfg), dtypes)
    return codec.advance(base, delta)


def _minus(trained: np.ndarray, sent: np.ndarray) -> np.ndarray:
    if np.issubdtype(sent.dtype, np.floating):
        return np.asarray(trained, dtype=np.float32) - sent
    return trained


def wire_bytes(messages: list[Message]) -> int:
    """Bytes of the messages as Flower serializes them (protobuf), errors included."""
    return sum(message_to_proto(msg).ByteSize() for msg in messages)
