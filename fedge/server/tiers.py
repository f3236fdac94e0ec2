"""Device tiers on the grid: ask each node its partition and device-class, map it to a tier."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import as_int
from fedge.pipeline.tiers import tier_of
from fedge.server.replies import replies_by_node

log = logging.getLogger("fedge")


def node_tiers(grid: Grid, cfg: RunConfig, node_partition: dict[int, int]) -> dict[int, str]:
    """Every connected node's tier (query.info); a node that does not answer goes by partition."""
    tiers = list(cfg.tier_budgets)
    nodes = list(grid.get_node_ids())
    messages = [
        Message(RecordDict({m.CONFIG: ConfigRecord()}), message_type=m.INFO, dst_node_id=n)
        for n in nodes
    ]
    for msg in messages:
        msg.metadata.ttl = cfg.round_timeout
    replies = replies_by_node(
        messages, list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    )
    out = {}
    for node in nodes:
        reply, device_class = replies.get(node), ""
        if reply is not None and not reply.has_error():
            metrics = reply.content.metric_records.get(m.METRICS)
            if metrics is not None and m.PARTITION_ID in metrics:
                node_partition.setdefault(node, as_int(metrics[m.PARTITION_ID]))
            status = reply.content.config_records.get(m.STATUS)
            device_class = str(status.get(m.NODE_DEVICE_CLASS, "")) if status else ""
        out[node] = tier_of(node_partition.get(node), device_class, tiers)
    counts = {t: sum(v == t for v in out.values()) for t in tiers}
    log.info("tiers: %s", ", ".join(f"{t} {n} nodes" for t, n in counts.items()))
    return out
