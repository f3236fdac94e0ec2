"""The live federation as the server knows it: which partition each connected node holds.

Node ids change when a simulation restarts or a SuperNode reconnects; a client is its
partition id. This map is live server state: never checkpointed, learnt from replies (a train
or evaluate reply names its partition) or asked for (query.info) when sampling needs it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.superlink.grid import InMemoryGrid

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.server.replies import partition_of, replies_by_node

log = logging.getLogger("fedge")


@dataclass
class Nodes:
    """node id -> partition id, for every node that said which partition it holds.

    `runtimes`: node id -> the runtime its query.info reply declared ("" when it named none),
    kept so that the deploy does not ask again the nodes a tier lookup just asked.
    """

    partitions: dict[int, int] = field(default_factory=dict)
    runtimes: dict[int, str] = field(default_factory=dict)

    def partition_of(self, node: int) -> int | None:
        """The node's partition, if known."""
        return self.partitions.get(node)

    def learn(self, node: int, reply: Message | None) -> None:
        """Remember the partition a successful reply names (a valid metrics' partition-id)."""
        partition = partition_of(reply)
        if partition is not None:
            self.partitions[node] = partition

    def discover(self, grid: Grid, cfg: RunConfig) -> None:
        """Ask every connected node whose partition is unknown which one it holds (query.info).

        A node that does not answer stays unknown and is never sampled (its partition's turn
        is then a failure).
        """
        unknown = [n for n in grid.get_node_ids() if n not in self.partitions]
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
            self.learn(node, reply)
        missing = len(unknown) - sum(n in self.partitions for n in unknown)
        log.info(
            "client sampling: %d nodes told their partition%s",
            len(unknown) - missing,
            f", {missing} did not answer" if missing else "",
        )

    def sampled(self, messages: list[Message], partitions: list[int]) -> list[Message]:
        """The messages addressed to nodes holding one of `partitions`."""
        wanted = set(partitions)
        return [msg for msg in messages if self.partition_of(msg.metadata.dst_node_id) in wanted]


class FederationError(RuntimeError):
    """The federation cannot go on (too few nodes, a round with no usable reply)."""


# In a simulation every SuperNode registers within a second of the start; a count that has not
# grown for this long will not grow (e.g. `flwr run .` on Flower's default 2-node federation).
SIMULATION_SETTLE_S = 5.0


def wait_for_nodes(grid: Grid, wanted: int, timeout: float, what: str = "clients") -> list[int]:
    """Wait until `wanted` nodes are connected; a clear error instead of waiting forever.

    Real SuperNodes may join over `timeout` seconds; a simulated federation is complete at the
    start, so a shortfall there fails within seconds, with the fix.
    """
    simulated = isinstance(grid, InMemoryGrid)
    start = last_change = time.monotonic()
    seen = -1
    while len(nodes := list(grid.get_node_ids())) < wanted:
        now = time.monotonic()
        if len(nodes) != seen:
            seen, last_change = len(nodes), now
        settled = simulated and now - last_change > SIMULATION_SETTLE_S
        if settled or now - start > timeout:
            fix = (
                f"this simulation has {len(nodes)} SuperNodes: run it with --federation-config "
                f'"num-supernodes={wanted}" or set {what}={len(nodes)}'
                if settled
                else 'start more SuperNodes (flwr run: --federation-config "num-supernodes=N") '
                f"or lower {what}"
            )
            raise FederationError(
                f"only {len(nodes)} of {what}={wanted} nodes connected after "
                f"{now - start:.0f} s; {fix}"
            )
        time.sleep(0.2)
    return nodes
