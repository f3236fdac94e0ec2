"""Federated teacher training: our own round loop over a Flower strategy, with central evaluation."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp import Grid
from torch import nn

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.partition import Split
from fedge.core.records import (
    as_float,
    as_int,
    config_to_record,
    record_to_weights,
    weights_to_record,
)
from fedge.core.training import evaluate, get_weights, set_weights
from fedge.server.replies import replies_by_node
from fedge.server.strategy import make_strategy

log = logging.getLogger("fedge")


class FederationError(RuntimeError):
    """The federation cannot go on (too few nodes, a round with no usable reply)."""


@dataclass
class TrainingLog:
    """What training produced besides the model."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    train_bytes: int = 0
    node_partition: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    client_teacher_accuracy: dict[int, float] = field(default_factory=dict)  # partition id -> acc


def wait_for_nodes(grid: Grid, wanted: int, timeout: float) -> list[int]:
    """Wait until `wanted` nodes are connected; a clear error instead of waiting forever."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < wanted:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of clients={wanted} nodes connected after {timeout:.0f} s; "
                'start more SuperNodes (flwr run: --federation-config "num-supernodes=N") '
                "or lower clients"
            )
        time.sleep(0.2)
    return nodes


def train_teacher(
    grid: Grid, cfg: RunConfig, teacher: nn.Module, test: Split, spec: dict[str, Any]
) -> TrainingLog:
    """Run cfg.rounds rounds; `teacher` holds the aggregated weights at the end.

    `spec` (records.model_spec) tells clients the model input and preprocessing.
    """
    strategy = make_strategy(cfg)
    wait_for_nodes(grid, cfg.clients, timeout=min(cfg.round_timeout, 120.0))
    arrays = weights_to_record(get_weights(teacher))
    out = TrainingLog()
    for server_round in range(1, cfg.rounds + 1):
        start = time.monotonic()
        messages = list(
            strategy.configure_train(server_round, arrays, config_to_record(cfg, **spec), grid)
        )
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
        out.train_bytes += _array_bytes(messages) + _array_bytes(replies)
        failures = _failures(replies, messages, out.node_partition)
        new_arrays, metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is None:
            raise FederationError(
                f"round {server_round}: no client returned a usable update ({failures})"
            )
        arrays = new_arrays
        set_weights(teacher, record_to_weights(arrays))
        loss, accuracy = evaluate(teacher, test.x, test.y)
        row = {
            "round": server_round,
            "accuracy": accuracy,
            "loss": loss,
            "train_loss": as_float(metrics[m.TRAIN_LOSS])
            if metrics and m.TRAIN_LOSS in metrics
            else None,
            "clients_ok": len(replies) - len(failures),
            "clients_failed": failures,
            "seconds": time.monotonic() - start,
        }
        out.rounds.append(row)
        log.info(
            "round %d/%d  central accuracy %.4f  loss %.4f  clients %d ok, %d failed",
            server_round,
            cfg.rounds,
            accuracy,
            loss,
            row["clients_ok"],
            len(failures),
        )
    out.client_teacher_accuracy = _federated_evaluate(grid, cfg, strategy, arrays, spec)
    return out


def _federated_evaluate(
    grid: Grid, cfg: RunConfig, strategy: Any, arrays: ArrayRecord, spec: dict[str, Any]
) -> dict[int, float]:
    """The final teacher on every client's local test split (partition id -> accuracy)."""
    messages = list(
        strategy.configure_evaluate(cfg.rounds, arrays, config_to_record(cfg, **spec), grid)
    )
    replies = grid.send_and_receive(messages, timeout=cfg.round_timeout)
    result = {}
    for reply in replies:
        if not reply.has_error():
            metrics: MetricRecord = reply.content.metric_records[m.METRICS]
            result[as_int(metrics[m.PARTITION_ID])] = as_float(metrics[m.ACCURACY])
    return result


def _failures(
    replies: list[Message], sent: list[Message], node_partition: dict[int, int]
) -> list[dict[str, Any]]:
    """Error replies and missing replies, each with node id, partition id (when known) and reason."""
    failures = []
    for node, reply in replies_by_node(sent, replies).items():
        if reply is not None and not reply.has_error():
            node_partition[node] = as_int(reply.content.metric_records[m.METRICS][m.PARTITION_ID])
            continue
        reason = "no reply before round-timeout" if reply is None else reply.error.reason
        failures.append(
            {"node_id": node, "partition_id": node_partition.get(node), "reason": reason}
        )
    return failures


def _array_bytes(messages: list[Message]) -> int:
    return sum(
        record.count_bytes()
        for msg in messages
        if not msg.has_error()
        for record in msg.content.array_records.values()
    )
