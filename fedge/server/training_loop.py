"""Federated teacher training: our own round loop over a Flower strategy, with central evaluation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from torch import nn

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.faults import round_roles
from fedge.core.partition import Split
from fedge.core.records import (
    as_float,
    config_to_record,
    record_to_weights,
    weights_to_record,
)
from fedge.core.sampling import evaluate_sample, samples_clients, train_sample
from fedge.core.training import evaluate, get_weights, set_weights
from fedge.pipeline.rundir.checkpoint import (
    Checkpoint,
    CheckpointDir,
    TrainingLog,
    capture_rng,
    restore_rng,
    resume_fingerprint,
)
from fedge.server.central_dp import round_privacy
from fedge.server.exchange import Collected, plain_exchange
from fedge.server.nodes import FederationError, Nodes, wait_for_nodes
from fedge.server.replies import (
    BadReplyError,
    error_text,
    metrics_of,
    number,
    partition_of,
    replies_by_node,
)
from fedge.server.secagg import secure_exchange
from fedge.server.strategy import make_strategy, restore_strategy_state, strategy_state
from fedge.server.update_codec import (
    DownlinkChain,
    encode_downlink,
    settle_chain,
)

log = logging.getLogger("fedge")


OnRound = Callable[[str, dict[str, Any]], None]  # (phase, finished round's row)


@dataclass
class RoundLoop:
    """The live state of one sequence of rounds (the teacher's, or one student's)."""

    nodes: Nodes  # shared by every loop of the run
    sampling_secret: int | None = None  # central DP's Poisson sample: only the server knows it
    downlink: DownlinkChain = field(default_factory=DownlinkChain)  # delta downlink's view
    last_round_nodes: list[int] = field(default_factory=list)  # whose update was aggregated
    earlier: list[dict[str, Any]] = field(default_factory=list)  # earlier loops' rows (DP ledger)
    phase: str = "teacher"  # whose rounds: teacher | student (the DP noise of that phase)
    secagg_ahead: dict[int, list[bytes]] = field(default_factory=dict)  # next round's keys


def train_teacher(
    grid: Grid,
    cfg: RunConfig,
    teacher: nn.Module,
    test: Split,
    spec: dict[str, Any],
    checkpoints: CheckpointDir | None = None,
    on_round: OnRound | None = None,
    loop: RoundLoop | None = None,
) -> TrainingLog:
    """Run cfg.rounds rounds; `teacher` holds the aggregated weights at the end.

    `on_round("teacher", row)` sees every finished round (e.g. TensorBoard scalars).

    `spec` (records.model_spec) tells clients the model input and preprocessing. With
    `checkpoints`, every finished round is saved, and a run that finds a checkpoint there
    continues after its round with the same model, strategy state and RNG states. `loop`: the
    run's live state (the nodes' partitions, the sampling secret); a new one if not given.
    """
    loop = loop or RoundLoop(Nodes())
    strategy = make_strategy(cfg)
    out, first = TrainingLog(), 1
    saved = checkpoints.latest() if checkpoints is not None else None
    if saved is not None:
        out, first = _resume(saved, teacher, strategy), saved.round + 1
        log.info("resuming after round %d of %d", saved.round, cfg.rounds)
    wait_for_nodes(grid, cfg.clients, timeout=min(cfg.round_timeout, 120.0))
    arrays = weights_to_record(get_weights(teacher))
    started = time.monotonic()
    for server_round in range(first, cfg.rounds + 1):
        arrays, row = train_round(grid, cfg, strategy, server_round, arrays, spec, out, loop)
        set_weights(teacher, record_to_weights(arrays))
        arrays = weights_to_record(get_weights(teacher))  # the model's dtypes (FedAdam: float64)
        loss, accuracy = evaluate(teacher, test.x, test.y)
        row.update({"accuracy": accuracy, "loss": loss})
        out.rounds.append(row)
        _log_round(cfg, row, done=server_round - first + 1, seconds=time.monotonic() - started)
        if checkpoints is not None:
            checkpoints.save(
                Checkpoint(
                    round=server_round,
                    weights=get_weights(teacher),
                    strategy=strategy_state(strategy),
                    log=out.to_json(),
                    rng=capture_rng(),
                    config=resume_fingerprint(cfg),
                )
            )
        row["elapsed_s"] = time.monotonic() - started  # this process, evaluation and checkpoint in
        if on_round is not None:
            on_round("teacher", row)
    if out.rounds and all(row["skipped"] for row in out.rounds):
        reasons = "; ".join(f"round {r['round']}: {r['skipped']}" for r in out.rounds[-3:])
        raise FederationError(f"no round produced a model ({reasons})")
    out.client_teacher_accuracy = _federated_evaluate(grid, cfg, strategy, arrays, spec, loop.nodes)
    return out


def _resume(saved: Checkpoint, teacher: nn.Module, strategy: Any) -> TrainingLog:
    """Model, strategy state and RNG states as they were after the checkpoint's round."""
    set_weights(teacher, saved.weights)
    restore_strategy_state(strategy, saved.strategy)
    restore_rng(saved.rng)
    out = TrainingLog.from_json(saved.log)
    norms = [r["dp_clipping_norm"] for r in out.rounds if "dp_clipping_norm" in r]
    if norms:  # adaptive clipping's norm moved round by round
        strategy.clipping_norm = norms[-1]
    out.resumed_from.append(saved.round)
    return out


def _log_round(cfg: RunConfig, row: dict[str, Any], done: int, seconds: float) -> None:
    """One line per round: accuracy, clients, and the teacher rounds' time left at this pace."""
    left = (cfg.rounds - row["round"]) * seconds / max(done, 1)
    log.info(
        "round %d/%d  central accuracy %.4f  loss %.4f  clients %d ok, %d failed, %d rejected  "
        "%.0f s, about %.0f s of training left%s",
        row["round"],
        cfg.rounds,
        row["accuracy"],
        row["loss"],
        row["clients_ok"],
        len(row["clients_failed"]),
        len(row["clients_rejected"]),
        seconds,
        left,
        f"  (skipped: {row['skipped']})" if row["skipped"] else "",
    )


def train_round(
    grid: Grid,
    cfg: RunConfig,
    strategy: Any,
    server_round: int,
    arrays: ArrayRecord,
    spec: dict[str, Any],
    out: TrainingLog,
    loop: RoundLoop,
    message_type: str = m.TRAIN,
    records: dict[str, ConfigRecord] | None = None,
) -> tuple[ArrayRecord, dict[str, Any]]:
    """One round: send, receive, validate, aggregate robustly. Returns the new model and its row.

    Fewer than `min-clients` accepted updates (or an aggregation rule that cannot decide)
    skips the round: the model stays as it was and the row says why. `message_type`: the
    teacher's rounds (train) or the student's (train.student), which share all of this;
    `records` go into every message beside the run's config (the student rounds' settings).
    """
    start = time.monotonic()
    wait_for_nodes(grid, cfg.min_clients, timeout=cfg.round_timeout, what="min-clients")
    chosen = train_sample(cfg, server_round, loop.sampling_secret)
    messages = _round_messages(grid, cfg, strategy, server_round, arrays, spec, loop, chosen)
    for msg in messages:  # expire with the round: a late node never trains a stale round
        msg.metadata.ttl, msg.metadata.message_type = cfg.round_timeout, message_type
        msg.content.update(records or {})
    encode_downlink(cfg, messages, arrays, loop.downlink)
    secure = partial(secure_exchange, ahead=loop.secagg_ahead)  # keys made at the last unmask
    exchange = secure if cfg.secure_aggregation != "off" else plain_exchange
    got = exchange(grid, cfg, messages, arrays, server_round)
    out.train_bytes += got.downlink + got.uplink
    failures = _failures(got.by_node, loop.nodes, got.errors)
    if samples_clients(cfg):  # every node was asked its partition: one nobody holds is lost
        failures += _unreached(chosen, messages, loop.nodes)
    settle_chain(loop.downlink, got.by_node, {r["node_id"] for r in got.rejected})
    out.rejected += got.rejected
    loop.last_round_nodes = got.contributors
    arrays, skipped, metrics = _aggregate(cfg, strategy, server_round, got, arrays)
    row = {
        "round": server_round,
        "train_loss": as_float(metrics[m.TRAIN_LOSS])
        if metrics and m.TRAIN_LOSS in metrics
        else None,
        "clients_ok": len(got.contributors),
        "clients_failed": failures,
        "clients_rejected": sorted(
            r["partition_id"] for r in got.rejected if r["partition_id"] is not None
        ),
        "skipped": skipped,
        "sampled": chosen if samples_clients(cfg) else None,
        "downlink_bytes": got.downlink,
        "uplink_bytes": got.uplink,
        "injected": _injected(cfg, server_round),
        "seconds": time.monotonic() - start,
        **({"secagg": got.secagg} if got.secagg is not None else {}),
    }
    prior = loop.earlier + out.rounds  # every earlier round of the run, whichever phase
    count = len(got.contributors)
    row.update(round_privacy(cfg, strategy, prior, got.ok, count, skipped, loop.phase))
    return arrays, row


def _round_messages(
    grid: Grid,
    cfg: RunConfig,
    strategy: Any,
    server_round: int,
    arrays: ArrayRecord,
    spec: dict[str, Any],
    loop: RoundLoop,
    chosen: list[int],
) -> list[Message]:
    """The strategy's train messages, to the sampled partitions' nodes only."""
    messages = list(
        strategy.configure_train(server_round, arrays, config_to_record(cfg, **spec), grid)
    )
    if samples_clients(cfg):  # the strategy addressed every node; keep the sampled partitions
        loop.nodes.discover(grid, cfg)
        messages = loop.nodes.sampled(messages, chosen)
    return messages


def _injected(cfg: RunConfig, server_round: int) -> dict[str, list[int]]:
    """The partitions the simulation made misbehave in this round (results.json)."""
    roles = round_roles(cfg, server_round)
    return {
        "byzantine": sorted(roles.byzantine),
        "dropped": sorted(roles.dropped),
        "stragglers": sorted(roles.stragglers),
    }


def _aggregate(
    cfg: RunConfig, strategy: Any, server_round: int, got: Collected, arrays: ArrayRecord
) -> tuple[ArrayRecord, str | None, Any]:
    """The strategy's aggregate of the accepted updates, or the old model and why it was kept."""
    accepted = got.accepted
    if got.failed is not None:
        return arrays, got.failed, None
    if len(got.contributors) < cfg.min_clients:
        return arrays, f"{len(got.contributors)} valid updates, min-clients={cfg.min_clients}", None
    try:
        new_arrays, metrics = strategy.aggregate_train(server_round, [c.reply for c in accepted])
    except Exception as err:  # noqa: BLE001  (checked replies should not get here: a round lost)
        log.exception("round %d: aggregation failed; the model is kept", server_round)
        return arrays, f"aggregation failed: {type(err).__name__}: {err}", None
    if new_arrays is None:
        reason = f"aggregation {cfg.aggregation!r} returned no model from {len(accepted)} updates"
        return arrays, reason, metrics
    if not all(np.isfinite(a).all() for a in record_to_weights(new_arrays).values()):
        return arrays, "the aggregated model has NaN or Inf values; kept the previous one", metrics
    return new_arrays, None, metrics


def _federated_evaluate(
    grid: Grid,
    cfg: RunConfig,
    strategy: Any,
    arrays: ArrayRecord,
    spec: dict[str, Any],
    nodes: Nodes,
) -> dict[int, float]:
    """The final teacher on every client's local test split (partition id -> accuracy)."""
    messages = list(
        strategy.configure_evaluate(cfg.rounds, arrays, config_to_record(cfg, **spec), grid)
    )
    if cfg.fraction_evaluate < 1:
        nodes.discover(grid, cfg)
        messages = nodes.sampled(messages, evaluate_sample(cfg))
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    result = {}
    for node, reply in replies_by_node(messages, replies).items():
        partition = partition_of(reply)
        if reply is None or partition is None:
            continue
        try:
            accuracy = number(metrics_of(reply), m.ACCURACY, 0.0)
        except BadReplyError as err:
            log.warning("final evaluation: node %d: %s", node, err)
            continue
        nodes.partitions[node] = partition
        result[partition] = min(accuracy, 1.0)
    return result


def _unreached(chosen: list[int], messages: list[Message], nodes: Nodes) -> list[dict[str, Any]]:
    """Sampled partitions no message went to: no connected node said it holds them."""
    addressed = {nodes.partition_of(msg.metadata.dst_node_id) for msg in messages}
    return [
        {"node_id": None, "partition_id": p, "reason": "no node answered query.info for it"}
        for p in sorted(set(chosen) - addressed)
    ]


def _failures(
    by_node: dict[int, Message | None], nodes: Nodes, errors: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """Error replies and missing replies, each with node id, partition id (when known) and reason.

    `errors`: reasons known otherwise (a secure aggregation stage the node failed).
    """
    failures = []
    for node, reply in by_node.items():
        if reply is not None and not reply.has_error():
            nodes.learn(node, reply)
            continue
        reason = (
            "no reply before round-timeout" if reply is None else error_text(reply.error.reason)
        )
        reason = (errors or {}).get(node, reason)
        failures.append(
            {"node_id": node, "partition_id": nodes.partition_of(node), "reason": reason}
        )
    return failures
