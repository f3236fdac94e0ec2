"""Ensemble distillation's Flower half: ask the last round's clients for logits (query.logits)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedge.compression.ensemble import transfer_set
from fedge.compression.kd import KDConfig
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.partition import PublicPool
from fedge.core.records import config_to_record
from fedge.pipeline.chain.teacher_source import KdSource, from_client_logits
from fedge.server.replies import BadReplyError, arrays_payload, partition_of, replies_by_node


def ensemble_source(
    grid: Grid,
    cfg: RunConfig,
    teacher: nn.Module,
    pool: PublicPool,
    *,
    nodes: list[int],
    spec: dict[str, Any],
    run_dir: Path,
) -> KdSource:
    """FedDF-style: the last round's clients label a public transfer set; distill their mean.

    Clients receive public inputs and return logits only (see teacher_source.from_client_logits
    for what happens when nobody can answer).
    """
    kd = KDConfig.from_run(cfg)
    transfer = transfer_set(
        pool, cfg.ensemble_views, seed=cfg.seed, mixup=kd.mixup, noise=kd.noise, shift=kd.shift
    )
    per_client, failures, sent = query_logits(grid, cfg, nodes, transfer, spec)
    return from_client_logits(
        teacher,
        pool,
        transfer=transfer,
        per_client=per_client,
        failures=failures,
        query_bytes=sent,
        views=cfg.ensemble_views,
        run_dir=run_dir,
    )


def query_logits(
    grid: Grid, cfg: RunConfig, nodes: list[int], transfer: PublicPool, spec: dict[str, Any]
) -> tuple[list[tuple[int, np.ndarray]], list[dict[str, Any]], int]:
    """Each node's logits on the transfer inputs: [(partition, logits)], failures, bytes sent."""
    inputs = ArrayRecord({"x": Array(np.ascontiguousarray(transfer.x, dtype=np.float32))})
    config = config_to_record(cfg, **spec, **{"server-round": cfg.rounds})
    messages = [
        Message(
            RecordDict({m.INPUTS: inputs, m.CONFIG: config}), message_type=m.LOGITS, dst_node_id=n
        )
        for n in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    expected = (len(transfer), int(spec[m.NUM_CLASSES]))
    answers, failures = [], []
    for node, reply in sorted(replies_by_node(messages, replies).items()):
        reason = _bad_reply(reply, expected)
        if reason:
            failures.append({"node_id": node, "reason": reason})
            continue
        assert reply is not None
        partition = partition_of(reply)
        if partition is None:
            failures.append({"node_id": node, "reason": "the reply names no valid partition-id"})
            continue
        answers.append((partition, arrays_payload(reply, m.LOGITS_RECORD)["logits"]))
    answers.sort(key=lambda a: a[0])  # a fixed order whatever order replies arrived in
    return answers, failures, inputs.count_bytes() * len(messages)


def _bad_reply(reply: Message | None, expected: tuple[int, int]) -> str | None:
    """Why a logits reply cannot be used, or None."""
    if reply is None:
        return "no reply before round-timeout"
    if reply.has_error():
        return str(reply.error.reason)
    try:
        arrays = arrays_payload(reply, m.LOGITS_RECORD)
    except BadReplyError as err:
        return str(err)
    if list(arrays) != ["logits"]:
        return "the reply carries no logits record"
    logits = arrays["logits"]
    if logits.dtype != np.float32 or logits.shape != expected:
        return f"logits of {logits.dtype} {logits.shape}, expected float32 {expected}"
    if not np.isfinite(logits).all():
        return "logits with NaN or Inf"
    return None
