"""Which teacher distillation learns from: the global model, or the clients' ensemble (query.logits)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedge.compression.ensemble import LogitTable, average_logits, transfer_set
from fedge.core import messages as m
from fedge.core.config import ConfigError, RunConfig
from fedge.core.io import atomic_write_bytes
from fedge.core.partition import PublicPool
from fedge.core.records import as_int, config_to_record
from fedge.core.training import predict_logits
from fedge.server.compression_phase import CompressionConfig
from fedge.server.replies import replies_by_node

log = logging.getLogger("fedge")
ENSEMBLE_FILE = "ensemble.npz"  # transfer inputs and averaged client logits, for fedge compress


@dataclass
class KdSource:
    """What the compression phase distills from, on which public inputs, with which settings."""

    teacher: nn.Module
    pool: PublicPool
    compression: CompressionConfig
    summary: dict[str, Any]  # results.json "ensemble"


def global_source(teacher: nn.Module, pool: PublicPool, compression: CompressionConfig) -> KdSource:
    """Distill from the aggregated global model, augmenting the pool on the fly."""
    return KdSource(teacher, pool, compression, {"mode": "global"})


def ensemble_source(
    grid: Grid,
    cfg: RunConfig,
    teacher: nn.Module,
    pool: PublicPool,
    compression: CompressionConfig,
    *,
    nodes: list[int],
    spec: dict[str, Any],
    run_dir: Path,
) -> KdSource:
    """FedDF-style: the last round's clients label a public transfer set; distill their mean.

    Clients receive public inputs and return logits only. If no client can answer (e.g. a run
    resumed after its last round: the nodes' models are gone), the global model is used and the
    summary says why.
    """
    transfer = transfer_set(
        pool,
        cfg.ensemble_views,
        seed=cfg.seed,
        mixup=compression.distill.mixup,
        noise=compression.distill.noise,
        shift=compression.distill.shift,
    )
    per_client, failures, sent = query_logits(grid, cfg, nodes, transfer, spec)
    if not per_client:
        reason = "; ".join(f["reason"] for f in failures[:3]) or "no node trained the last round"
        log.warning("ensemble: no client logits (%s); distilling from the global model", reason)
        return KdSource(
            teacher,
            pool,
            compression,
            {"mode": "global", "requested": "ensemble", "reason": reason, "failed": failures},
        )
    logits = average_logits([p[1] for p in per_client])
    buffer = io.BytesIO()
    np.savez(buffer, x=transfer.x, logits=logits)
    atomic_write_bytes(run_dir / ENSEMBLE_FILE, buffer.getvalue())
    agreement = float((predict_logits(teacher, transfer.x).argmax(1) == logits.argmax(1)).mean())
    log.info(
        "ensemble: %d clients labeled %d transfer inputs; agrees with the global model on %.1f %%",
        len(per_client),
        len(transfer),
        100 * agreement,
    )
    return KdSource(
        LogitTable(transfer.x, logits),
        transfer,
        compression.on_fixed_views(cfg.ensemble_views),
        {
            "mode": "ensemble",
            "clients": sorted(p[0] for p in per_client),
            "failed": failures,
            "transfer_inputs": len(transfer),
            "query_bytes": sent,
            "agreement_with_global": agreement,
        },
    )


def stored_source(
    run_dir: Path, teacher: nn.Module, pool: PublicPool, compression: CompressionConfig, views: int
) -> KdSource:
    """The ensemble a finished run saved (fedge compress); ConfigError if it saved none."""
    path = Path(run_dir) / ENSEMBLE_FILE
    if not path.is_file():
        raise ConfigError(
            f"teacher-mode ensemble needs {path}, which only a run with teacher-mode ensemble "
            "writes; allowed here: teacher-mode global"
        )
    with np.load(path, allow_pickle=False) as data:
        x, logits = data["x"], data["logits"]
    return KdSource(
        LogitTable(x, logits),
        PublicPool(x),
        compression.on_fixed_views(views),
        {"mode": "ensemble", "transfer_inputs": len(x), "from": ENSEMBLE_FILE},
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
        partition = as_int(reply.content.metric_records[m.METRICS][m.PARTITION_ID])
        answers.append((partition, reply.content.array_records[m.LOGITS_RECORD]["logits"].numpy()))
    answers.sort(key=lambda a: a[0])  # a fixed order whatever order replies arrived in
    return answers, failures, inputs.count_bytes() * len(messages)


def _bad_reply(reply: Message | None, expected: tuple[int, int]) -> str | None:
    """Why a logits reply cannot be used, or None."""
    if reply is None:
        return "no reply before round-timeout"
    if reply.has_error():
        return str(reply.error.reason)
    record = reply.content.array_records.get(m.LOGITS_RECORD)
    if record is None or list(record) != ["logits"]:
        return "the reply carries no logits record"
    logits = record["logits"].numpy()
    if logits.shape != expected:
        return f"logits of shape {logits.shape}, expected {expected}"
    if not np.isfinite(logits).all():
        return "logits with NaN or Inf"
    return None
