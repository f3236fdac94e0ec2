"""Redistribution: send the signed bundle to every node in a query.deploy message, collect verdicts."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import as_float, as_int, config_to_record
from fedge.server.replies import replies_by_node

log = logging.getLogger("fedge")


def deploy_bundle(
    grid: Grid,
    cfg: RunConfig,
    files: dict[str, bytes],
    *,
    simulation_store_root: Path,
    simulation_trusted_key: Path,
    node_partition: dict[int, int],
    spec: dict[str, Any],
    tiers: tuple[dict[str, dict[str, bytes]], dict[int, str]] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Send the bundle to every connected node; returns per-client rows and bytes sent.

    With `tiers` (each tier's bundle files, each node's tier), a node gets its tier's bundle
    and its row names the tier; simulated nodes then install one at a time, so the latency each
    times for its budget is not slowed by the others installing on the same cores.
    """
    bundles, node_tier = tiers if tiers is not None else ({"": files}, {})
    extra: dict[str, Any] = {
        # Simulated nodes only: real nodes use their own store and key, whatever is sent here.
        m.SIMULATION_STORE_ROOT: str(simulation_store_root),
        m.SIMULATION_TRUSTED_KEY: str(simulation_trusted_key),
        **spec,
    }
    contents = {
        tier: RecordDict(
            {
                m.CONFIG: config_to_record(
                    cfg,
                    **{key: tier_files[name] for name, key in m.BUNDLE_FILE_KEYS.items()},
                    **extra,
                )
            }
        )
        for tier, tier_files in bundles.items()
    }
    sizes = {t: sum(len(f[name]) for name in m.BUNDLE_FILE_KEYS) for t, f in bundles.items()}
    nodes = list(grid.get_node_ids())
    sent = {node: node_tier.get(node, next(iter(bundles))) for node in nodes}
    messages = [
        Message(content=contents[sent[node]], message_type=m.DEPLOY, dst_node_id=node)
        for node in nodes
    ]
    if tiers is not None and os.environ.get(m.SIMULATION_ENV) == "1":
        # one node at a time: simulated nodes share the cores, and each times its model alone
        replies = [
            r for msg in messages for r in grid.send_and_receive([msg], timeout=cfg.round_timeout)
        ]
    else:
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    answers = replies_by_node(messages, replies)
    gone = [node for node in node_partition if node not in answers]  # trained, then disconnected
    clients = [_client_row(reply, node_partition.get(node)) for node, reply in answers.items()]
    clients += [
        _not_installed(node_partition.get(node), "not connected at deploy time") for node in gone
    ]
    if tiers is not None:
        for row, node in zip(clients, [*answers, *gone], strict=True):
            row["tier"] = node_tier.get(node)
    clients.sort(key=lambda r: (r["partition_id"] is None, r["partition_id"] or 0))
    ok = sum(r["installed"] for r in clients)
    log.info("deploy: %d of %d clients installed the bundle", ok, len(clients))
    return clients, sum(sizes[sent[node]] for node in nodes)


def _client_row(reply: Message | None, partition_id: int | None) -> dict[str, Any]:
    """One client's verdict from its deploy reply (None: no reply before the timeout)."""
    if reply is None:
        return _not_installed(partition_id, "no reply before round-timeout")
    if reply.has_error():
        return _not_installed(partition_id, str(reply.error.reason))
    metrics = reply.content.metric_records[m.METRICS]
    installed = bool(metrics[m.INSTALLED])
    return {
        "partition_id": as_int(metrics[m.PARTITION_ID]),
        "installed": installed,
        "reason": str(reply.content.config_records[m.STATUS][m.REASON]),
        "accuracy": as_float(metrics[m.ACCURACY]) if installed else None,
        "latency_us_p50": as_float(metrics[m.LATENCY_US_P50]) if installed else None,
        # a node of an older fedge does not time the bare onnxruntime call
        "onnx_us_p50": as_float(metrics[m.ONNX_US_P50])
        if installed and m.ONNX_US_P50 in metrics
        else None,
        "test_examples": as_int(metrics[m.NUM_EXAMPLES]),
    }


def not_deployed(node_partition: dict[int, int]) -> list[dict[str, Any]]:
    """Every client's row when the quality gate stopped the bundle (nothing was sent)."""
    reason = "not shipped: the teacher failed the quality gate"
    return [_not_installed(p, reason) for p in sorted(set(node_partition.values()))]


def _not_installed(partition_id: int | None, reason: str) -> dict[str, Any]:
    return {
        "partition_id": partition_id,
        "installed": False,
        "reason": reason,
        "accuracy": None,
        "latency_us_p50": None,
        "onnx_us_p50": None,
    }
