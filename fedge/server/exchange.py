"""A training round's exchange with the clients: send the model, collect what can be aggregated.

Plain: each node's reply, decoded and validated one by one (fedge.server.validation). With
secure aggregation the server never sees one update: fedge.server.secagg gives the same
`Collected` with one accepted entry, the survivors' weighted mean.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from fedge.core.config import RunConfig
from fedge.core.records import record_to_weights
from fedge.server.replies import replies_by_node
from fedge.server.update_codec import decode_updates, wire_bytes
from fedge.server.validation import Checked, validate_updates

log = logging.getLogger("fedge")


@dataclass(frozen=True)
class Collected:
    """What one round's exchange gave the server."""

    by_node: dict[int, Message | None]  # each asked node's (last) reply; None: none came
    accepted: list[Checked]  # what the strategy aggregates
    rejected: list[dict[str, Any]]  # replies refused, each with node, partition and reason
    contributors: list[int]  # node ids whose update is in the aggregate
    downlink: int  # serialized bytes, server to clients
    uplink: int  # ... and back
    failed: str | None = None  # why nothing can be aggregated (secure aggregation), if so
    secagg: dict[str, Any] | None = None  # the protocol's per-stage counts (the round's row)
    errors: dict[int, str] = field(default_factory=dict)  # why a node failed, where no reply says

    @property
    def ok(self) -> dict[int, Message]:
        """The nodes that replied without an error, and their replies."""
        return {n: r for n, r in self.by_node.items() if r is not None and not r.has_error()}


def plain_exchange(
    grid: Grid, cfg: RunConfig, messages: list[Message], arrays: ArrayRecord, server_round: int
) -> Collected:
    """Send the round's messages; decode and validate each reply."""
    replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    downlink, uplink = wire_bytes(messages), wire_bytes(replies)  # as sent, before decoding
    replied = Collected(replies_by_node(messages, replies), [], [], [], downlink, uplink)
    accepted, rejected = checked(cfg, replied.ok, arrays, server_round)  # decodes in place
    contributors = [c.node_id for c in accepted]
    return dataclasses.replace(
        replied, accepted=accepted, rejected=rejected, contributors=contributors
    )


def checked(
    cfg: RunConfig, ok: dict[int, Message], arrays: ArrayRecord, server_round: int
) -> tuple[list[Checked], list[dict[str, Any]]]:
    """Decode and validate the replies: the accepted updates, and each rejection with why."""
    undecodable = decode_updates(cfg, ok, record_to_weights(arrays))
    # Under central DP clipping bounds every update: no data-dependent norm rule before it.
    factor = 0.0 if cfg.dp == "central" else cfg.norm_outlier_factor
    reference = record_to_weights(arrays)
    accepted, rejected = validate_updates(ok, reference, norm_outlier_factor=factor, cfg=cfg)
    rejected = undecodable + rejected
    for row in rejected:
        row["round"] = server_round
        log.warning(
            "round %d: rejected the update of partition %s: %s",
            server_round,
            row["partition_id"],
            row["reason"],
        )
    return accepted, rejected
