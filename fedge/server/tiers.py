"""Device tiers on the grid: each node's tier (query.info) and device profile (query.profile)."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedge.core import messages as m
from fedge.core.bundle_format import RUNTIMES
from fedge.core.config import RunConfig
from fedge.core.profile import Profile, ProfileError, parse_profile
from fedge.pipeline.ship.tiers import tier_of
from fedge.server.nodes import Nodes
from fedge.server.replies import BadReplyError, partition_of, replies_by_node, status_of, text

log = logging.getLogger("fedge")


def _ask_every_node(
    grid: Grid, cfg: RunConfig, message_type: str, only: list[int] | None = None
) -> dict[int, Message | None]:
    """Send an empty query to every connected node (or `only` these); each reply (None: none)."""
    messages = [
        Message(RecordDict({m.CONFIG: ConfigRecord()}), message_type=message_type, dst_node_id=n)
        for n in (grid.get_node_ids() if only is None else only)
    ]
    for msg in messages:
        msg.metadata.ttl = cfg.round_timeout
    return replies_by_node(
        messages, list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
    )


def node_tiers(grid: Grid, cfg: RunConfig, nodes: Nodes) -> dict[int, str]:
    """Every connected node's tier (query.info); a node that does not answer goes by partition."""
    tiers = list(cfg.tier_budgets)
    out = {}
    for node, reply in _ask_every_node(grid, cfg, m.INFO).items():
        partition = partition_of(reply)
        if partition is not None:
            nodes.partitions.setdefault(node, partition)
        if reply is not None and not reply.has_error():
            nodes.runtimes[node] = _runtime(reply)  # the deploy reads it: no second query
        declared = _device_class(reply)
        out[node] = tier_of(nodes.partition_of(node), declared, tiers)
        if declared and declared not in tiers:  # it will refuse the bundle of any other tier
            log.warning(
                "tiers: node %d declares device-class %r, which is none of the tiers (%s); "
                "it gets tier %s's bundle and will refuse it",
                node,
                declared,
                ", ".join(tiers),
                out[node],
            )
    counts = {t: sum(v == t for v in out.values()) for t in tiers}
    log.info("tiers: %s", ", ".join(f"{t} {n} nodes" for t, n in counts.items()))
    return out


def node_runtimes(grid: Grid, cfg: RunConfig, nodes: Nodes) -> dict[int, str]:
    """Each answering node's declared runtime (query.info); a node that says none is left out.

    Nodes whose reply `nodes` already holds (a tier lookup asked them) are not asked again.
    """
    unknown = [n for n in grid.get_node_ids() if n not in nodes.runtimes]
    if unknown:
        for node, reply in _ask_every_node(grid, cfg, m.INFO, unknown).items():
            if reply is not None and not reply.has_error():
                nodes.runtimes[node] = _runtime(reply)
    connected = set(grid.get_node_ids())
    return {n: r for n, r in nodes.runtimes.items() if r and n in connected}


def _runtime(reply: Message) -> str:
    """The runtime a successful query.info reply declares ("" when none, or not a runtime)."""
    try:
        runtime = text(status_of(reply), m.NODE_RUNTIME, limit=16)
    except BadReplyError:
        return ""
    return runtime if runtime in RUNTIMES else ""


def _device_class(reply: Message | None) -> str:
    """The device-class a query.info reply names ("" when it names none, or not as text)."""
    if reply is None or reply.has_error():
        return ""
    try:
        return text(status_of(reply), m.NODE_DEVICE_CLASS, limit=64)
    except BadReplyError:
        return ""


def tier_profiles(
    grid: Grid, cfg: RunConfig, node_tier: dict[int, str]
) -> dict[str, list[Profile | None]]:
    """Each tier's nodes' device profiles (query.profile); None for a node without a usable one.

    A node whose profile is missing, unreadable or refused (another fedge version, malformed)
    is judged on the server's CPU, and the log says why.
    """
    out: dict[str, list[Profile | None]] = {t: [] for t in cfg.tier_budgets}
    for node, reply in _ask_every_node(grid, cfg, m.PROFILE).items():
        profile = None
        if reply is None or reply.has_error():
            why = "no reply" if reply is None else str(reply.error.reason)
            log.warning("tiers: node %d sent no device profile (%s)", node, why)
        else:
            status = reply.content.config_records.get(m.STATUS)
            text = str(status.get(m.PROFILE_JSON, "")) if status else ""
            profile = _checked(text, node)
        if node in node_tier:
            out[node_tier[node]].append(profile)
    for tier, profiles in out.items():  # a tier is judged on its slowest node: say which
        known = [p.name for p in profiles if p is not None]
        if known:
            log.info("tiers: %s judged on profiles %s", tier, ", ".join(sorted(set(known))))
    return out


def _checked(text: str, node: int) -> Profile | None:
    """A node's profile, or None (logged) if it sent none or one the server refuses.

    The text comes from the node: it is capped in size, and anything that fails to parse
    (deep nesting included) counts as no profile rather than stopping the release.
    """
    if not text:
        return None
    if len(text) > m.MAX_PROFILE_BYTES:
        log.warning(
            "tiers: node %d sent a %d-byte profile (at most %d)",
            node,
            len(text),
            m.MAX_PROFILE_BYTES,
        )
        return None
    try:
        return parse_profile(text, f"of node {node}")
    except (ProfileError, RecursionError, MemoryError) as err:
        log.warning("tiers: %s; judged on this machine instead", str(err)[:300])
        return None
