"""Redistribution: send the signed bundle to every node in a query.deploy message, collect verdicts."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedge.core import messages as m
from fedge.core.bundle_format import ARTIFACTS
from fedge.core.config import RunConfig
from fedge.core.records import config_to_record
from fedge.pipeline.outputs.results import NOT_CONNECTED
from fedge.pipeline.outputs.rows import ClientRow
from fedge.server.nodes import Nodes
from fedge.server.replies import (
    MAX_PARTITION,
    BadReplyError,
    count,
    error_text,
    metrics_of,
    number,
    replies_by_node,
    status_of,
    text,
)
from fedge.server.tiers import node_runtimes

log = logging.getLogger("fedge")


def deploy_bundle(
    grid: Grid,
    cfg: RunConfig,
    files: dict[str, bytes],
    *,
    simulation_store_root: Path,
    simulation_trusted_key: Path,
    nodes: Nodes,
    spec: dict[str, Any],
    tiers: tuple[dict[str, dict[str, bytes]], dict[int, str]] | None = None,
) -> tuple[list[ClientRow], int]:
    """Send the bundle to every connected node; returns per-client rows and bytes sent.

    With `tiers` (each tier's bundle files, each node's tier), a node gets its tier's bundle
    and its row names the tier; simulated nodes then install one at a time, so the latency each
    times for its budget is not slowed by the others installing on the same cores; artifacts
    for other runtimes go only to nodes that declare that runtime (query.info).
    """
    bundles, node_tier = tiers if tiers is not None else ({"": files}, {})
    extra: dict[str, Any] = {
        # Simulated nodes only: real nodes use their own store and key, whatever is sent here.
        m.SIMULATION_STORE_ROOT: str(simulation_store_root),
        m.SIMULATION_TRUSTED_KEY: str(simulation_trusted_key),
        **spec,
    }
    targets = list(grid.get_node_ids())
    sent = _destinations(grid, cfg, bundles, node_tier, nodes, targets)
    simulated = os.environ.get(m.SIMULATION_ENV) == "1"
    timed = timed_nodes(cfg, targets, nodes, narrow=simulated and tiers is None)
    contents = {  # one per (tier, runtime, timed) some node gets
        (tier, runtime, t): _content(cfg, _for(bundles[tier], runtime), extra, tier, t)
        for (tier, runtime), t in {(sent[node], node in timed) for node in targets}
    }
    messages = [
        Message(contents[*sent[node], node in timed], message_type=m.DEPLOY, dst_node_id=node)
        for node in targets
    ]
    # Simulated nodes whose figure is used (a tier's budget) or singled out (auto) install one
    # at a time after the others, so the latency they time is not taken under the others' load.
    alone = timed if simulated and (tiers is not None or len(timed) < len(targets)) else set()
    answers = _send(grid, messages, cfg.round_timeout, alone)
    gone = [node for node in nodes.partitions if node not in answers]  # trained, then left
    clients = [_client_row(reply, nodes.partition_of(node)) for node, reply in answers.items()]
    clients += [_not_installed(nodes.partition_of(n), NOT_CONNECTED) for n in gone]
    if tiers is not None:
        clients = [
            dataclasses.replace(row, tier=node_tier.get(node))
            for row, node in zip(clients, [*answers, *gone], strict=True)
        ]
    clients.sort(key=lambda r: (r.partition_id is None, r.partition_id or 0))
    log.info(
        "deploy: %d of %d clients installed the bundle",
        sum(r.installed for r in clients),
        len(clients),
    )
    sizes = {
        pair: sum(map(len, _for(bundles[pair[0]], pair[1]).values())) for pair in {*sent.values()}
    }
    return clients, sum(sizes[sent[node]] for node in targets)


def _destinations(
    grid: Grid,
    cfg: RunConfig,
    bundles: dict[str, dict[str, bytes]],
    node_tier: dict[int, str],
    nodes: Nodes,
    targets: list[int],
) -> dict[int, tuple[str, str]]:
    """Each node's (tier, runtime): the bundle it gets and whose artifacts ("": every file)."""
    runtimes = node_runtimes(grid, cfg, nodes) if _has_artifacts(bundles) else {}
    first = next(iter(bundles))
    return {node: (node_tier.get(node, first), runtimes.get(node, "")) for node in targets}


def _has_artifacts(bundles: dict[str, dict[str, bytes]]) -> bool:
    return any(name in files for files in bundles.values() for name, _ in ARTIFACTS.values())


def _for(files: dict[str, bytes], runtime: str) -> dict[str, bytes]:
    """The bundle files a node of `runtime` gets: all but other runtimes' ("": unknown, all)."""
    others = {name for r, (name, _) in ARTIFACTS.items() if runtime and r != runtime}
    return {name: data for name, data in files.items() if name not in others}


SIMULATION_TIMED_NODES = 10  # install-timing auto: the clients of a simulation that time


def timed_nodes(cfg: RunConfig, targets: list[int], nodes: Nodes, *, narrow: bool) -> set[int]:
    """The nodes asked to time the model they install.

    Every node, except under install-timing auto in a simulation without tiers (`narrow`):
    its nodes share one machine, so timing a thousand of them measures the same thing a
    thousand times (three measurements half a second apart each) and keeps the deploy round
    past its timeout. Then only the SIMULATION_TIMED_NODES nodes of the lowest partitions
    time; the others install and evaluate with install-timing off (no latency in their rows).
    """
    if cfg.install_timing != "auto" or not narrow:
        return set(targets)

    def order(node: int) -> tuple[int, int]:
        partition = nodes.partition_of(node)
        return (MAX_PARTITION + 1 if partition is None else partition, node)

    return set(sorted(targets, key=order)[:SIMULATION_TIMED_NODES])


def _content(
    cfg: RunConfig, files: dict[str, bytes], extra: dict[str, Any], tier: str, timed: bool
) -> RecordDict:
    """A deploy message's content: the bundle's files and the run's settings.

    A node that is not to time the model gets install-timing off; a node of a tier is told it.
    """
    bundle = {key: files[name] for name, key in m.BUNDLE_FILE_KEYS.items() if name in files}
    settings = cfg if timed else dataclasses.replace(cfg, install_timing="off")
    told = {m.DEPLOY_TIER: tier} if tier else {}
    return RecordDict({m.CONFIG: config_to_record(settings, **bundle, **extra, **told)})


def _send(
    grid: Grid, messages: list[Message], timeout: float, alone: set[int]
) -> dict[int, Message | None]:
    """Each addressed node's reply (None: none before the timeout).

    The messages to nodes in `alone` go after the others, one at a time.
    """
    together = [msg for msg in messages if msg.metadata.dst_node_id not in alone]
    replies = list(grid.send_and_receive(together, timeout=timeout)) if together else []
    for msg in messages:
        if msg.metadata.dst_node_id in alone:
            replies += grid.send_and_receive([msg], timeout=timeout)
    return replies_by_node(messages, replies)


def _client_row(reply: Message | None, partition_id: int | None) -> ClientRow:
    """One client's verdict from its deploy reply (None: no reply before the timeout)."""
    if reply is None:
        return _not_installed(partition_id, "no reply before round-timeout")
    if reply.has_error():
        return _not_installed(partition_id, error_text(reply.error.reason))
    try:
        metrics, status = metrics_of(reply), status_of(reply)
        installed = bool(count(metrics, m.INSTALLED, 0, 1))
        return ClientRow(
            partition_id=count(metrics, m.PARTITION_ID, 0, MAX_PARTITION),
            installed=installed,
            # an empty reason is no reason: the report and results.json always say one
            reason=text(status, m.REASON)
            or ("installed" if installed else "the node gave no reason"),
            accuracy=_optional(metrics, m.ACCURACY) if installed else None,
            # a node with install-timing off does not time the model, an older one the bare
            # onnxruntime call
            latency_us_p50=_optional(metrics, m.LATENCY_US_P50) if installed else None,
            onnx_us_p50=_optional(metrics, m.ONNX_US_P50) if installed else None,
            test_examples=count(metrics, m.NUM_EXAMPLES),
        )
    except BadReplyError as err:  # the node says nothing it can be held to: not counted installed
        return _not_installed(partition_id, str(err))


def _optional(metrics: MetricRecord, key: str) -> float | None:
    """A non-negative figure the node may leave out (None); NaN is no figure either.

    A node that installed the bundle but could not evaluate it on its data reports NaN.
    """
    value = metrics.get(key)
    if isinstance(value, float) and math.isnan(value) or value is None:
        return None
    return number(metrics, key, 0.0)


def not_deployed(nodes: Nodes) -> list[ClientRow]:
    """Every client's row when the quality gate stopped the bundle (nothing was sent)."""
    reason = "not shipped: the teacher failed the quality gate"
    return [_not_installed(p, reason) for p in sorted(set(nodes.partitions.values()))]


def _not_installed(partition_id: int | None, reason: str) -> ClientRow:
    return ClientRow(partition_id=partition_id, installed=False, reason=reason)
