"""A Flower client mod that decodes the compressed model and sends back a compressed update.

Outermost mod of every train handler: it decodes the downlink (an int8 model, or in delta mode
a coded change to the model the node kept from its last chain message) into the model the
handler trains, and replaces the trained weights in the reply by the encoded update (trained minus
received), with error feedback kept in the node's context state per message type. The server
decodes before validation (fedge.server.update_codec), so every strategy sees plain arrays.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedge.core import codec
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import (
    as_int,
    record_to_config,
    record_to_weights,
    weights_to_record,
    with_arrays,
)

RESIDUAL = "fedge.residual."  # + message type: what compression left out of the last update
ROUND = ".round"  # + the residual's key: the round it was left by
CODEC_STREAM = 0xC0DEC


def update_codec_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Decode the downlink, run the handler, encode its update (see the module docstring)."""
    config = msg.content.config_records.get(m.CONFIG)
    if config is None or m.ARRAYS not in msg.content.array_records:
        return call_next(msg, context)
    cfg = record_to_config(config)
    if cfg.downlink_compression == "none" and (
        cfg.update_compression == "none" or cfg.secure_aggregation != "off"
    ):  # nothing to decode; under secagg+, secagg_mod quantizes the update itself
        return call_next(msg, context)
    arrived = msg.content
    base = _received(cfg, arrived, context, msg.metadata.message_type)
    # A new RecordDict: the arrived one may be shared with other messages (in-process grids).
    msg.content = with_arrays(arrived, weights_to_record(base))
    try:
        reply = call_next(msg, context)
    finally:
        msg.content = arrived
    if cfg.update_compression == "none" or reply.has_error():
        return reply
    trained = record_to_weights(reply.content.array_records[m.ARRAYS])
    delta = {
        k: np.asarray(v, dtype=np.float32) - base[k] if np.issubdtype(v.dtype, np.floating) else v
        for k, v in trained.items()
    }
    server_round = as_int(config.get("server-round", 0))
    kind = msg.metadata.message_type
    if cfg.error_feedback:
        delta = with_residual(context, kind, server_round, delta)
    partition = as_int(context.node_config.get(m.NODE_PARTITION_ID, 0))
    rng = np.random.default_rng([cfg.seed, server_round, partition, CODEC_STREAM])
    try:
        encoded, decoded = codec.roundtrip(delta, codec.of_run(cfg), rng)
    except ValueError:  # NaN/Inf: sent as trained, the server's validation rejects it
        keep_residual(context, kind, server_round, None)
        return reply
    if cfg.error_feedback:
        floating = [k for k in delta if np.issubdtype(delta[k].dtype, np.floating)]
        keep_residual(context, kind, server_round, {k: delta[k] - decoded[k] for k in floating})
    reply.content = with_arrays(reply.content, weights_to_record(encoded))
    return reply


def with_residual(
    context: Context, kind: str, server_round: int, delta: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """`delta` plus what compression left out of this node's last update of `kind`.

    Only the residual of the round just before counts: a node that sat rounds out starts anew.
    """
    key = RESIDUAL + kind
    residual = context.state.array_records.get(key)
    follows = context.state.config_records.get(key + ROUND)  # the residual's round
    if residual is None or follows is None or follows["round"] != server_round - 1:
        return delta
    carried = record_to_weights(residual)
    if {k: v.shape for k, v in carried.items()} != {k: v.shape for k, v in delta.items()}:
        return delta
    return {k: v + carried[k] if k in carried else v for k, v in delta.items()}


def keep_residual(
    context: Context, kind: str, server_round: int, residual: dict[str, np.ndarray] | None
) -> None:
    """Keep what compression left out of this round's update (None: forget the last one)."""
    key = RESIDUAL + kind
    if residual is None:
        if key in context.state:
            del context.state[key]
        return
    context.state[key] = weights_to_record(residual)
    context.state[key + ROUND] = ConfigRecord({"round": server_round})


def _received(
    cfg: RunConfig, content: RecordDict, context: Context, kind: str
) -> dict[str, np.ndarray]:
    """The model the server sent, decoded; in delta mode, the view it becomes is kept."""
    received = record_to_weights(content.array_records[m.ARRAYS])
    if cfg.downlink_compression == "none":
        return received
    if cfg.downlink_compression == "int8":
        return codec.decode_int8(received)
    how = content.config_records.get(m.DOWNLINK)
    if how is None:
        raise ValueError("downlink-compression delta: the message carries no downlink record")
    key = m.STATE_VIEW + kind
    if how["kind"] == m.DOWNLINK_FULL:
        model = codec.decode_int8(received)
    else:
        held = context.state.config_records.get(key + ROUND)
        if held is None or key not in context.state.array_records or held["view"] != how["base"]:
            raise ValueError(
                "downlink-compression delta: this node does not hold the model the change "
                f"applies to (view {as_int(how['base'])}); the server sends the full model next time"
            )
        view = record_to_weights(context.state.array_records[key])
        shapes = {k: tuple(v.shape) for k, v in view.items()}
        model = codec.advance(view, codec.decode(received, shapes, codec.delta_codec(cfg)))
    if as_int(how["view"]):  # a chain view: the next delta applies to it
        context.state[key] = weights_to_record(model)
        context.state[key + ROUND] = ConfigRecord({"view": how["view"]})
    elif key in context.state:
        del context.state[key]
    return model
