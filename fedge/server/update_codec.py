"""Server side of compressed training traffic: encode the downlink, decode every update.

Replies are decoded back into ordinary full weights (received model + decoded update) before
validation, so validation, robust rules and DP wrappers see what they always see. A reply that
does not decode is rejected like any malformed update.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.common.serde import message_to_proto

from fedge.core import codec
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import as_int, record_to_weights, weights_to_record, with_arrays

DOWNLINK = codec.Codec("int8", stochastic=False)


def encode_downlink(
    cfg: RunConfig, messages: list[Message], arrays: ArrayRecord
) -> dict[str, np.ndarray]:
    """Put the (int8) model into every message; returns the model the clients will decode."""
    weights = record_to_weights(arrays)
    if cfg.downlink_compression == "none":
        return dict(weights)
    encoded = codec.encode(weights, DOWNLINK, np.random.default_rng(0))  # deterministic
    record = weights_to_record(encoded)
    for msg in messages:  # Flower's strategies give every message the same RecordDict
        msg.content = with_arrays(msg.content, record)
    return codec.decode_int8(encoded)


def decode_updates(
    cfg: RunConfig, replies: dict[int, Message], base: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Rewrite each reply's arrays as full weights, in place; rejection rows for the rest."""
    if cfg.update_compression == "none":
        return []
    shapes = {k: tuple(v.shape) for k, v in base.items()}
    rejected = []
    for node_id, reply in list(replies.items()):
        try:
            encoded = record_to_weights(reply.content.array_records[m.ARRAYS])
            delta = codec.decode(encoded, shapes, codec.of_run(cfg))
        except (KeyError, ValueError, TypeError) as err:
            del replies[node_id]
            metrics = reply.content.metric_records.get(m.METRICS)
            partition = (
                as_int(metrics[m.PARTITION_ID])
                if metrics is not None and m.PARTITION_ID in metrics
                else None
            )
            reason = f"compressed update does not decode: {err}"
            rejected.append({"node_id": node_id, "partition_id": partition, "reason": reason})
            continue
        full = {  # floating tensors travel as updates, integer ones as they are
            k: (base[k] + delta[k]).astype(base[k].dtype)
            if np.issubdtype(base[k].dtype, np.floating)
            else np.asarray(delta[k], dtype=base[k].dtype)
            for k in base
        }
        reply.content = with_arrays(reply.content, weights_to_record(full))
    return rejected


def wire_bytes(messages: list[Message]) -> int:
    """Bytes of the messages as Flower serializes them (protobuf), errors included."""
    return sum(message_to_proto(msg).ByteSize() for msg in messages)
