"""An in-process Grid that delivers messages to the real ClientApp, one Context per node.

It mirrors what Flower's runtimes do around a ClientApp (route by node id, turn an exception
in a handler into an error reply) so server code can be tested without Ray or gRPC.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


def set_task_identity() -> None:
    TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1


def node_context(node_id: int, partition_id: int, num_partitions: int, **node_config) -> Context:
    config = {"partition-id": partition_id, "num-partitions": num_partitions, **node_config}
    return Context(run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={})


class LocalGrid(Grid):
    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        failing_partitions: Iterable[int] = (),
        failing_types: Iterable[str] = ("train",),
        first_node_id: int = 100,  # another value: the same federation after a restart
        die_at: str | None = None,  # a message type: the server "dies" before sending it
    ) -> None:
        set_task_identity()
        self.client_app = client_app
        first = first_node_id
        self.contexts = {first + i: node_context(first + i, i, num_nodes) for i in range(num_nodes)}
        self.failing = set(failing_partitions)
        self.failing_types = set(failing_types)
        self.sent: list[Message] = []
        self.die_at = die_at

    def set_run(self, run):  # noqa: D102
        pass

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: D102
        return Message(
            content=content, message_type=message_type, dst_node_id=dst_node_id, group_id=group_id
        )

    def get_node_ids(self):  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages):  # noqa: D102
        raise NotImplementedError

    def pull_messages(self, message_ids):  # noqa: D102
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        """Handlers run in threads; a reply that misses `timeout` is left out, as on a real grid."""
        messages = list(messages)
        if any(msg.metadata.message_type == self.die_at for msg in messages):
            raise KeyboardInterrupt(f"the server was killed before sending {self.die_at}")
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id  # as a real grid's push does
            self.sent.append(msg)
        pool = ThreadPoolExecutor(max_workers=max(1, len(messages)))
        futures = [pool.submit(self._handle, msg) for msg in messages]
        done, _ = wait(futures, timeout=timeout)
        pool.shutdown(wait=False)
        return [f.result() for f in futures if f in done]

    def _handle(self, msg):
        context = self.contexts[msg.metadata.dst_node_id]
        try:
            if (
                context.node_config["partition-id"] in self.failing
                and msg.metadata.message_type in self.failing_types
            ):
                raise RuntimeError(f"simulated crash in {msg.metadata.message_type}")
            return self.client_app(msg, context)
        except Exception as err:  # what a Flower runtime does with a raising handler
            return Message(Error(code=1, reason=f"{type(err).__name__}: {err}"), reply_to=msg)


def in_process_engine(
    num_nodes: int, swallowed: tuple[type[Exception], ...] = ()
) -> Callable[..., None]:
    """An engine for `fedge.simulations.runner.simulate`: the real ServerApp on a LocalGrid.

    What `fedge simulate` runs, without a Ray start: the server's `main` (its staged run
    directory, its checkpoints) and `num_nodes` ClientApps in this process. `swallowed`: the
    exceptions Flower's engine would log rather than raise.
    """
    from fedge.server.app import main as server_main

    def engine(client_app: ClientApp, server_app: Any, cfg: Any, run_config: Any, **_: Any) -> None:
        context = Context(
            run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
        )
        with contextlib.suppress(*swallowed):
            server_main(LocalGrid(client_app, num_nodes=num_nodes), context)

    return engine
