"""Client sampling on the grid: learn which node holds which partition, keep the sampled ones."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import as_int
from fedge.server.replies import replies_by_node

log = logging.getLogger("fedge")


def discover_partitions(grid: Grid, cfg: RunConfig, node_partition: dict[int, int]) -> None:
    """Ask every connected node whose partition is unknown which one it holds (query.info).

    Sampling is by partition id; node ids change when a simulation restarts. A node that does
    not answer stays unknown and is never sampled (its partition's turn is then a failure).
    """
    unknown = [n for n in grid.get_node_ids() if n not in node_partition]
    if not unknown:
        return
    messages = [
        Message(RecordDict({m.CONFIG: ConfigRecord()}), message_type=m.INFO, dst_node_id=n)
        for n in unknown
    ]
    for msg in messages:
        msg.metadata.ttl = cfg.round_timeout
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    for node, reply in replies_by_node(messages, replies).items():
        if reply is not None and not reply.has_error():
            metrics: MetricRecord = reply.content.metric_records[m.METRICS]
            node_partition[node] = as_int(metrics[m.PARTITION_ID])
    missing = len(unknown) - sum(n in node_partition for n in unknown)
    log.info(
        "client sampling: %d nodes told their partition%s",
        len(unknown) - missing,
        f", {missing} did not answer" if missing else "",
    )


def sampled(
    messages: list[Message], partitions: list[int], node_partition: dict[int, int]
) -> list[Message]:
    """The messages addressed to nodes holding one of `partitions`."""
    wanted = set(partitions)
    return [msg for msg in messages if node_partition.get(msg.metadata.dst_node_id) in wanted]
