"""Secure aggregation on the node: Flower's SecAgg+ stages, run from fedge's own handlers.

The key stages (setup, share keys, unmask) arrive as `query.secagg`; the masked vector is the
reply to the round's own train message (teacher or student), made by `secagg_mod` from what
the handler trained: the update never leaves the node unmasked. Every stage is Flower's own
function (flwr.client.mod.secure_aggregation.secaggplus_mod); fedge writes no cryptography.
State (keys, shares) lives in `context.state` between the stages of one round; key pairs
made at an unmask for the node's next round (so it needs no setup exchange) live there until
that round's share keys stage uses them, once.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import bytes_to_ndarray, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

from fedge.client.update_codec import keep_residual, with_residual
from fedge.core import messages as m
from fedge.core import secagg_grid as sg
from fedge.core.records import as_float, as_int, record_to_config

# Flower's stage functions: not exported, so imported by module path (flwr is pinned).
_FLOWER = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
_GLOBAL_RNG = threading.Lock()  # nodes in threads of one process (tests) share numpy's RNG
ROUND = "round"
KIND = "kind"  # the train message type the round's masked vector answers
CLEAR_METRICS = (m.PARTITION_ID, m.DP_EPSILON, m.DP_NOISE)  # sent beside the masked vector
AHEAD_FIELDS = ("sk1", "pk1", "sk2", "pk2")  # key pairs made ahead, as the state names them


def _state(context: Context, configs: ConfigRecord, kind: str, nid: int) -> Any:
    """The node's state for the stage in `configs` (popping "round"); a new one at setup.

    A share keys stage that carries the setup values (`setup.` keys, popped) is the first of
    a round this node keyed ahead, at its last unmask: Flower's setup with those values, on
    the key pairs it made then (used once).
    """
    server_round = as_int(configs.pop(ROUND))
    saved = context.state.config_records.get(m.STATE_SECAGG)
    setup = {
        k[len(m.SECAGG_SETUP) :]: configs.pop(k)
        for k in list(configs)
        if k.startswith(m.SECAGG_SETUP)
    }
    if configs.get(Key.STAGE) == Stage.SETUP or setup:
        ahead = context.state.config_records.get(m.STATE_SECAGG_AHEAD)
        for old in (m.STATE_SECAGG_AHEAD, m.STATE_SECAGG):  # keys ahead serve one round at
            if old in context.state:  # most; the last round's state none after this stage
                del context.state[old]
        context.state[m.STATE_SECAGG_ROUND] = ConfigRecord({ROUND: server_round, KIND: kind})
        if not setup:
            return _FLOWER.SecAggPlusState()
        if configs.get(Key.STAGE) != Stage.SHARE_KEYS or ahead is None:
            raise ValueError(
                f"secagg {configs.get(Key.STAGE)!r} of round {server_round} with setup values: "
                "only a share keys stage carries them, to a node that keyed ahead"
            )
        return _keyed_ahead(ConfigRecord(setup), ahead, nid)
    mine = context.state.config_records.get(m.STATE_SECAGG_ROUND)
    if saved is None or mine is None or (mine[ROUND], mine[KIND]) != (server_round, kind):
        raise ValueError(
            f"secagg stage {configs.get(Key.STAGE)!r} of round {server_round} ({kind}), but "
            "this node set up no such round"
        )
    return _FLOWER.SecAggPlusState(**dict(saved))


def _setup(state: Any, configs: ConfigRecord, nid: int) -> dict[str, Any]:
    """Flower's setup stage (two new key pairs) after fedge's check of the threshold."""
    _FLOWER.check_configs(Stage.SETUP, configs)
    threshold, shares = as_int(configs[Key.THRESHOLD]), as_int(configs[Key.SHARE_NUMBER])
    if 2 * threshold <= shares or threshold < 2:  # a majority, or a server could rebuild both
        raise ValueError(f"secagg setup: threshold {threshold} is not over half of {shares}")
    state.nid = nid
    return dict(_FLOWER._setup(state, configs))


def _keyed_ahead(setup: ConfigRecord, ahead: ConfigRecord, nid: int) -> Any:
    """A state set up by `setup` on the key pairs in `ahead`, ready for the share keys stage."""
    state = _FLOWER.SecAggPlusState()
    _setup(state, setup, nid)  # its new key pairs are dropped for the ones already published
    keys = [ahead[k] for k in AHEAD_FIELDS]
    if not all(isinstance(k, bytes) for k in keys):
        raise ValueError("secagg: the key pairs this node made ahead are not bytes")
    state.sk1, state.pk1, state.sk2, state.pk2 = keys
    state.current_stage = Stage.SETUP
    return state


def _make_keys_ahead(context: Context) -> dict[str, bytes]:
    """Two key pairs for this node's next round, kept; their public keys for the server."""
    (sk1, pk1), (sk2, pk2) = generate_key_pairs(), generate_key_pairs()
    keys = [private_key_to_bytes(sk1), public_key_to_bytes(pk1)]
    keys += [private_key_to_bytes(sk2), public_key_to_bytes(pk2)]
    context.state[m.STATE_SECAGG_AHEAD] = ConfigRecord(dict(zip(AHEAD_FIELDS, keys, strict=True)))
    return dict(zip(m.SECAGG_AHEAD_KEYS, (keys[1], keys[3]), strict=True))


def _advance(state: Any, configs: ConfigRecord) -> str:
    """Flower's checks that this stage follows the last and carries its keys; the stage."""
    _FLOWER.check_stage(state.current_stage, configs)
    state.current_stage = str(configs.pop(Key.STAGE))
    _FLOWER.check_configs(state.current_stage, configs)
    return state.current_stage


def key_stage(msg: Message, context: Context) -> Message:
    """query.secagg: setup (key pairs), share keys (encrypted shares), unmask (shares).

    An unmask that asks for it (`ahead`) also makes the key pairs of the node's next round,
    so that round needs no setup exchange.
    """
    configs = ConfigRecord(dict(msg.content.config_records[m.SECAGG]))  # a copy: never pop sent
    kind = str(configs.pop(KIND))
    ahead = bool(configs.pop(m.SECAGG_AHEAD, 0))
    state = _state(context, configs, kind, msg.metadata.dst_node_id)
    stage = _advance(state, configs)
    if stage == Stage.SETUP:
        result = _setup(state, configs, msg.metadata.dst_node_id)
    elif stage == Stage.SHARE_KEYS:
        result = _FLOWER._share_keys(state, configs)
    elif stage == Stage.UNMASK:
        active = {int(n) for n in configs[Key.ACTIVE_NODE_ID_LIST]}  # type: ignore[union-attr]
        dead = {int(n) for n in configs[Key.DEAD_NODE_ID_LIST]}  # type: ignore[union-attr]
        if active & dead or state.nid not in active:  # never reveal both secrets of a node
            raise ValueError("secagg unmask: a node both active and dropped, or this one dropped")
        result = _FLOWER._unmask(state, configs)
        if ahead:
            result.update(_make_keys_ahead(context))
    else:
        raise ValueError(f"secagg stage {stage!r} comes with the train message, not a query")
    context.state[m.STATE_SECAGG] = ConfigRecord(state.to_dict())
    return Message(RecordDict({m.SECAGG: ConfigRecord(result)}), reply_to=msg)


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The collect stage: train as asked, then reply with the masked update only.

    The masked vector is [weight factor, each array, the training loss]. A model that is not
    finite or outside the clipping range is not masked (an error: the round recovers this
    node as dropped); an int8 update beyond it is saturated, the excess carried over.
    """
    if m.SECAGG not in msg.content.config_records:
        return call_next(msg, context)
    sent = msg.content.config_records[m.SECAGG]
    configs = ConfigRecord(dict(sent))
    kind = str(configs.pop(KIND))
    weight_key = str(configs.pop(m.SECAGG_WEIGHT, m.NUM_EXAMPLES))
    delta = bool(configs.pop(m.SECAGG_DELTA, 0))
    if weight_key not in m.SECAGG_WEIGHTS:
        raise ValueError(f"secagg: weight {weight_key!r}; allowed: {', '.join(m.SECAGG_WEIGHTS)}")
    state = _state(context, configs, kind, msg.metadata.dst_node_id)
    if (
        _advance(state, configs) != Stage.COLLECT_MASKED_VECTORS
        or kind != msg.metadata.message_type
    ):
        raise ValueError("secagg: a train message must carry the collect stage of its own kind")
    del msg.content[m.SECAGG]  # the handler and the inner mods see the usual train message
    received = msg.content.array_records.get(m.ARRAYS) if delta else None
    if delta and received is None:
        raise ValueError("secagg: an int8 update needs the model it trains from; none came")
    try:
        reply = call_next(msg, context)
    finally:
        msg.content[m.SECAGG] = sent
    if reply.has_error():
        return reply  # a drop after key sharing: the others' shares recover its masks
    server_round = as_int(sent[ROUND])  # the train message's own round
    feedback = (
        received is not None
        and record_to_config(msg.content.config_records[m.CONFIG]).error_feedback
    )
    if received is None:
        vector, cut = _model_vector(reply), None
    else:
        update = _update(reply, received)
        if feedback:
            update = with_residual(context, kind, server_round, update)
        weight = as_float(reply.content.metric_records[m.METRICS][weight_key])
        vector, cut = _saturated(update, reply, _share(weight, state), state.clipping_range)
    masked = _masked(state, configs, vector, reply, (server_round, weight_key))
    if feedback:  # kept only once the update went out masked; None: nothing was cut
        keep_residual(context, kind, server_round, cut)
    context.state[m.STATE_SECAGG] = ConfigRecord(state.to_dict())
    metrics = reply.content.metric_records[m.METRICS]
    clear = MetricRecord({k: metrics[k] for k in CLEAR_METRICS if k in metrics})
    content: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {
        m.SECAGG_MASKED: masked,
        m.METRICS: clear,
        m.SECAGG: ConfigRecord({}),
    }
    return Message(RecordDict(content), reply_to=msg)


def _model_vector(reply: Message) -> list[np.ndarray]:
    """What a node masks of uncompressed training: the trained arrays, then the loss."""
    arrays = reply.content.array_records[m.ARRAYS]
    loss = as_float(reply.content.metric_records[m.METRICS][m.TRAIN_LOSS])
    return [*(np.asarray(arrays[k].numpy(), dtype=np.float64) for k in arrays), np.array([loss])]


def _update(reply: Message, received: ArrayRecord) -> dict[str, np.ndarray]:
    """What a node of int8 training masks instead of its model: trained minus `received`."""
    arrays = reply.content.array_records[m.ARRAYS]
    if list(received) != list(arrays):
        raise ValueError("secagg: the trained arrays are not the received model's")
    return {
        k: np.asarray(arrays[k].numpy(), dtype=np.float64) - received[k].numpy() for k in arrays
    }


def _saturated(
    delta: dict[str, np.ndarray], reply: Message, share: float, clip: float
) -> tuple[list[np.ndarray], dict[str, np.ndarray] | None]:
    """The update's vector inside the grid's range, then the loss; what saturation cut.

    Flower multiplies the vector by `share` (the weight share on the grid's levels), so a
    value beyond clip / share is saturated; the cut part is returned for error feedback (None:
    nothing was cut). The loss is sent as min(loss, cap) / cap x clip. A non-finite update
    passes through unchanged: `_masked` refuses it.
    """
    limit = clip / share if share > 0 else np.inf
    sent = {k: np.clip(v, -limit, limit) for k, v in delta.items()}
    cut = {k: (delta[k] - sent[k]).astype(np.float32) for k in delta}
    loss = as_float(reply.content.metric_records[m.METRICS][m.TRAIN_LOSS])
    scaled = min(loss, sg.LOSS_CAP) / sg.LOSS_CAP * clip
    return [*sent.values(), np.array([scaled])], cut if any(v.any() for v in cut.values()) else None


def _share(weight: float, state: Any) -> float:
    """The weight share Flower multiplies a vector by: weight / max-weight on the grid's levels."""
    return round(weight / state.max_weight * state.target_range) / state.target_range


def _masked(
    state: Any, configs: ConfigRecord, vector: list[np.ndarray], reply: Message, how: tuple
) -> ArrayRecord:
    """`vector` weighted (how: the round, the weight's metric), quantized and masked by Flower.

    Masked values lie in [0, modulus): they are sent in the narrowest unsigned type.
    """
    server_round, weight_key = how
    metrics = reply.content.metric_records[m.METRICS]
    weight = as_float(metrics[weight_key])
    if not all(np.isfinite(v).all() for v in vector):
        raise ValueError("secagg: the update is not finite; it is not masked")
    if weight > state.max_weight:
        raise ValueError(f"secagg: {weight:.0f} records > secagg-max-weight {state.max_weight}")
    largest = max(float(np.abs(v).max(initial=0.0)) for v in vector) * _share(weight, state)
    if largest > state.clipping_range * (1 + 1e-9):  # a saturated value may round up
        raise ValueError(
            f"secagg: a weighted value {largest:.3g} is outside secagg-clip {state.clipping_range}"
        )
    with _GLOBAL_RNG:  # Flower's stochastic rounding draws from numpy's global RNG: seed it
        rounding = np.random.get_state()
        np.random.seed([as_int(metrics[m.PARTITION_ID]), server_round])
        try:
            result = _FLOWER._collect_masked_vectors(
                state, configs, weight, ndarrays_to_parameters(vector)
            )
        finally:
            np.random.set_state(rounding)
    dtype = sg.wire_dtype(state.mod_range)
    vectors = [bytes_to_ndarray(b).astype(dtype) for b in result[Key.MASKED_PARAMETERS]]
    return ArrayRecord({str(i): Array(v) for i, v in enumerate(vectors)})
