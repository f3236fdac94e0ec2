"""Secure aggregation on the server: Flower's SecAgg+ stages on fedge's own round loop.

Four exchanges a round: setup (each node's two public keys), share keys (each node's shares
of its secrets, encrypted to the others), collect (the train message; each node replies with
its update masked; the server sums them mod M and deletes each), unmask (the survivors'
shares: the survivors' own masks, and the pairwise masks of those that dropped after sharing
keys, are removed). Each survivor's unmask reply also carries the public keys of its next
round, made then, so a round whose nodes all unmasked the last one has no setup exchange:
three exchanges, not four. The server holds public keys, ciphertexts it cannot read, the
running masked sum and then the weighted mean of the survivors; never one client's update.
Primitives are Flower's (flwr.common.secure_aggregation). As in Flower's SecAgg+, each node
masks and shares only with its neighbours on a shuffled ring (secagg-shares of them, itself
included; every node when the round is small), so a round's work grows with clients x
shares, not clients squared.
"""

from __future__ import annotations

import functools
import logging
import random
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (
    get_parameters_shape,
    parameters_addition,
    parameters_mod,
    parameters_subtraction,
)
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedge.core import messages as m
from fedge.core import secagg_grid as sg
from fedge.core.config import RunConfig
from fedge.core.config_rules import secagg_shares, secagg_threshold
from fedge.core.partition import build_federation, client_data
from fedge.core.records import record_to_weights
from fedge.server.exchange import Collected
from fedge.server.replies import error_text, replies_by_node
from fedge.server.secagg_graph import share_ring, valid_keys
from fedge.server.secagg_values import SecAggError, Vector, as_update, survivors_mean
from fedge.server.update_codec import wire_bytes
from fedge.server.validation import Checked

log = logging.getLogger("fedge")


@functools.lru_cache(maxsize=8)
def max_weight(cfg: RunConfig) -> int:
    """secagg-max-weight, or the most records a partition holds; 1 under central DP (unweighted)."""
    if cfg.dp == "central":
        return 1
    if cfg.secagg_max_weight:
        return cfg.secagg_max_weight
    fed = build_federation(cfg)
    return max(len(client_data(fed, pid, cfg).train) for pid in range(cfg.clients))


class _Exchange:
    """One round's protocol state on the server, stage by stage."""

    def __init__(
        self,
        grid: Grid,
        cfg: RunConfig,
        messages: list[Message],
        server_round: int,
        ahead: dict[int, list[bytes]],
    ):
        self.grid, self.cfg, self.round, self.ahead = grid, cfg, server_round, ahead
        self.train = {msg.metadata.dst_node_id: msg for msg in messages}
        self.kind = messages[0].metadata.message_type if messages else m.TRAIN
        self.failed: dict[int, str] = {}  # node -> stage and reason
        self.downlink = self.uplink = 0  # serialized bytes, as sent and received
        self.public_keys: dict[int, list[bytes]] = {}
        self.neighbours: dict[int, set[int]] = {}  # each node's share group, itself included
        self.modulus = self.threshold = 0  # set by setup() for the nodes it asks
        self.config: dict[str, Any] = {}  # setup's values (share keys carries them to `early`)
        self.early: set[int] = set()  # nodes whose keys came ahead: no setup exchange

    def ask(self, stage: str, nodes: list[int], records: dict[int, dict[str, Any]]) -> dict:
        """Send `stage` to `nodes` (each its record); the replies of those that answered."""
        messages = []
        for node in nodes:
            values = {"round": self.round, "kind": self.kind, Key.STAGE: stage, **records[node]}
            if stage == Stage.COLLECT_MASKED_VECTORS:
                content = RecordDict(dict(self.train[node].content.items()))
                content[m.SECAGG] = ConfigRecord(values)
                msg = Message(content, dst_node_id=node, message_type=self.kind)
            else:
                content = RecordDict({m.SECAGG: ConfigRecord(values)})
                msg = Message(content, dst_node_id=node, message_type=m.SECAGG_QUERY)
            msg.metadata.ttl = self.cfg.round_timeout
            messages.append(msg)
        replies = list(self.grid.send_and_receive(messages, timeout=self.cfg.round_timeout))
        self.downlink += wire_bytes(messages)
        self.uplink += wire_bytes(replies)  # before the masked vectors are summed and dropped
        answered = {}
        for node, reply in replies_by_node(messages, replies).items():
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else error_text(reply.error.reason)
                self.failed.setdefault(node, f"secagg {stage}: {why}")
            else:
                answered[node] = reply
        return answered

    def setup(self, nodes: list[int]) -> list[int]:
        """Each node makes its key pairs; the nodes that sent both public keys."""
        cfg = self.cfg
        # Sized for the nodes asked, which may be more than `clients` (extra nodes, or nodes
        # sharing a partition): the ring, the majority threshold and the modulus.
        ahead = {n: self.ahead.pop(n) for n in nodes if n in self.ahead}
        self.ahead.clear()  # a node's keys serve its next round only
        shares = secagg_shares(cfg, len(nodes))
        self.threshold = secagg_threshold(cfg, len(nodes))
        try:
            self.modulus = sg.modulus(cfg, len(nodes))
        except ValueError as err:
            raise SecAggError(f"secagg: {err}") from None
        self.neighbours = share_ring(nodes, shares, random.SystemRandom())
        config = {
            Key.SAMPLE_NUMBER: len(nodes),
            Key.SHARE_NUMBER: shares,
            Key.THRESHOLD: self.threshold,
            Key.CLIPPING_RANGE: sg.clip(cfg),
            Key.TARGET_RANGE: sg.levels(cfg),
            Key.MOD_RANGE: self.modulus,
            Key.MAX_WEIGHT: float(max_weight(cfg)),
        }
        self.config = config
        for node, pair in ahead.items():  # made at the last unmask, for this round: checked
            if valid_keys(pair, self.public_keys):
                self.public_keys[node] = pair
                self.early.add(node)
        late = [n for n in nodes if n not in self.early]
        replies = self.ask(Stage.SETUP, late, dict.fromkeys(late, config)) if late else {}
        for node, reply in replies.items():
            keys = self._read(node, Stage.SETUP, reply, Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2)
            if keys is not None and valid_keys(keys, self.public_keys):
                self.public_keys[node] = [bytes(k) for k in keys]
            elif keys is not None:
                self.failed[node] = "secagg setup: public keys not on Flower's curve, or others'"
        return sorted(self.public_keys)

    def _read(self, node: int, stage: str, reply: Message, *keys: str) -> list[Any] | None:
        """The values of `keys` in the reply's secagg record; None (the node failed) if absent."""
        try:
            record = reply.content.config_records[m.SECAGG]
            return [record[key] for key in keys]
        except (KeyError, TypeError):
            self.failed[node] = f"secagg {stage}: the reply lacks {', '.join(keys)}"
            return None

    def _pairs(self, node: int, stage: str, reply: Message, ids: str, values: str) -> list:
        """(node id, bytes) pairs of two parallel lists in the reply; [] if malformed."""
        read = self._read(node, stage, reply, ids, values)
        if read is None:
            return []
        try:
            pairs = [(int(i), v) for i, v in zip(read[0], read[1], strict=True)]
        except (TypeError, ValueError):
            pairs = []
        if not all(isinstance(v, bytes) for _, v in pairs):
            pairs = []
        if not pairs:
            self.failed[node] = f"secagg {stage}: malformed {ids} / {values}"
        return pairs

    def share_keys(self, nodes: list[int]) -> tuple[list[int], dict[int, tuple[list, list]]]:
        """Each node's shares, encrypted to each other node; who shared, and what goes to whom."""
        keyed = set(nodes)
        keys = {n: {str(v): self.public_keys[v] for v in self.neighbours[n] & keyed} for n in nodes}
        for node in self.early & keyed:  # the setup these nodes had no exchange for
            keys[node].update({m.SECAGG_SETUP + k: v for k, v in self.config.items()})
        replies = self.ask(Stage.SHARE_KEYS, nodes, keys)
        forward: dict[int, tuple[list, list]] = {n: ([], []) for n in replies}
        for source, reply in replies.items():
            pairs = self._pairs(
                source, Stage.SHARE_KEYS, reply, Key.DESTINATION_LIST, Key.CIPHERTEXT_LIST
            )
            if not pairs:
                forward.pop(source, None)
            for dst, text in pairs:
                if dst in forward:
                    forward[dst][0].append(source)
                    forward[dst][1].append(text)
        return sorted(forward), forward

    def collect(self, nodes: list[int], forward: dict, shapes: list[tuple]) -> tuple[dict, Vector]:
        """The train messages with the collect stage; the replies, and their masked sum mod M."""
        weight = m.UNIT_WEIGHT if self.cfg.dp == "central" else m.NUM_EXAMPLES
        records = {
            n: {
                Key.SOURCE_LIST: forward[n][0],
                Key.CIPHERTEXT_LIST: forward[n][1],
                m.SECAGG_WEIGHT: weight,
                m.SECAGG_DELTA: int(sg.masks_update(self.cfg)),
            }
            for n in nodes
        }
        replies = self.ask(Stage.COLLECT_MASKED_VECTORS, nodes, records)
        total: Vector | None = None
        good = {}
        for node, reply in replies.items():
            vector = self._masked(node, reply, shapes)
            if vector is None:
                continue
            total = vector if total is None else parameters_addition(total, vector)
            good[node] = reply
            del reply.content[m.SECAGG_MASKED]  # only the sum is kept
        if total is None:
            raise SecAggError("secagg: no node sent a masked update")
        return good, parameters_mod(total, self.modulus)

    def _masked(self, node: int, reply: Message, shapes: list[tuple]) -> Vector | None:
        """The node's masked vector if it is what the protocol sends, else None (it failed)."""
        record = reply.content.array_records.get(m.SECAGG_MASKED)
        try:
            vector = [] if record is None else [record[k].numpy() for k in record]
        except (ValueError, TypeError):  # bytes that are not an array: as a missing vector
            vector = []
        dtype = sg.wire_dtype(self.modulus)
        well_formed = [tuple(v.shape) for v in vector] == shapes and all(
            v.dtype == dtype and v.min(initial=0) >= 0 and v.max(initial=0) < self.modulus
            for v in vector
        )
        if not well_formed:
            self.failed[node] = (
                f"secagg collect: not a masked vector of the model's shapes in {dtype} below "
                f"{self.modulus}"
            )
            return None
        return [v.astype(np.int64) for v in vector]

    def unmask(self, survivors: list[int], dropped: list[int], total: Vector) -> Vector:
        """Remove the survivors' own masks and the dropped nodes' pairwise masks from `total`."""
        alive, dead = set(survivors), set(dropped)
        records = {
            n: {
                Key.ACTIVE_NODE_ID_LIST: sorted(self.neighbours[n] & alive),
                Key.DEAD_NODE_ID_LIST: sorted(self.neighbours[n] & dead),
                m.SECAGG_AHEAD: 1,  # and the key pairs of the node's next round
            }
            for n in survivors
        }
        replies = self.ask(Stage.UNMASK, survivors, records)
        shares: dict[int, list[bytes]] = {n: [] for n in survivors + dropped}
        for node, reply in replies.items():
            pairs = self._pairs(node, Stage.UNMASK, reply, Key.NODE_ID_LIST, Key.SHARE_LIST)
            if pairs:  # a well-formed reply: its keys for the next round may be kept
                self._keys_ahead(node, reply)
            for owner, share in pairs:
                if owner in shares:
                    shares[owner].append(share)
        threshold, dims = self.threshold, get_parameters_shape(total)
        for node, pieces in shares.items():
            if len(pieces) < threshold:
                raise SecAggError(
                    f"secagg: {len(pieces)} shares of node {node}'s secret, fewer than "
                    f"secagg-threshold={threshold}"
                )
            try:
                # Any `threshold` shares rebuild the secret; Lagrange interpolation costs the
                # square of the shares given, so more only slow it (3x at 10 of threshold 6).
                secret = combine_shares(pieces[:threshold])
                total = self._remove(node, secret, alive, total, dims)
            except (ValueError, TypeError) as err:  # shares of no key, or of a malformed one
                raise SecAggError(f"secagg: node {node}'s masks cannot be removed: {err}") from None
        return parameters_mod(total, self.modulus)

    def _keys_ahead(self, node: int, reply: Message) -> None:
        """The public keys of the node's next round, if its unmask reply holds two."""
        record = reply.content.config_records.get(m.SECAGG)
        keys = [record.get(k) for k in m.SECAGG_AHEAD_KEYS] if record is not None else []
        if len(keys) == 2 and all(isinstance(k, bytes) for k in keys):
            self.ahead[node] = [k for k in keys if isinstance(k, bytes)]

    def _remove(
        self, node: int, secret: bytes, alive: set[int], total: Vector, dims: list[tuple[int, ...]]
    ) -> Vector:
        """`total` without a survivor's own mask, or a dropped node's masks with the survivors."""
        if node in alive:
            return parameters_subtraction(total, self._prg(secret, dims))
        private = bytes_to_private_key(secret)
        for other in sorted(self.neighbours[node] & alive):
            shared = generate_shared_key(private, bytes_to_public_key(self.public_keys[other][0]))
            op = parameters_addition if node > other else parameters_subtraction
            total = op(total, self._prg(shared, dims))
        return total

    def _prg(self, seed: bytes, dims: list[tuple[int, ...]]) -> Vector:
        return pseudo_rand_gen(seed, self.modulus, dims)


def secure_exchange(
    grid: Grid,
    cfg: RunConfig,
    messages: list[Message],
    arrays: ArrayRecord,
    server_round: int,
    ahead: dict[int, list[bytes]] | None = None,
) -> Collected:
    """The round's exchange under SecAgg+: the survivors' weighted mean as the one update.

    `ahead`: the public keys nodes made at the last round's unmask, for this round (the
    round loop's; used or dropped here, and refilled by this round's unmask).
    """
    run = _Exchange(grid, cfg, messages, server_round, {} if ahead is None else ahead)
    reference = record_to_weights(arrays)
    shapes = [(1,), *(tuple(v.shape) for v in reference.values()), (1,)]
    counts: dict[str, Any] = {"asked": len(messages)}
    accepted: list[Checked] = []
    survivors: list[int] = []
    failed = None
    good: dict[int, Message] = {}
    try:
        keyed = run.setup(sorted(run.train))
        shared, forward = run.share_keys(keyed)
        good, total = run.collect(shared, forward, shapes)
        survivors, dropped = sorted(good), sorted(set(shared) - set(good))
        counts.update(keys=len(keyed), keyed_ahead=len(run.early), shared=len(shared))
        counts.update(masked=len(survivors), recovered=len(dropped))
        if len(survivors) < cfg.min_clients:  # decided before anything is unmasked
            raise SecAggError(
                f"secagg: {len(survivors)} masked updates, min-clients={cfg.min_clients}"
            )
        values = survivors_mean(cfg, run.unmask(survivors, dropped, total), len(survivors))
        accepted = [as_update(cfg, reference, values, run.kind, survivors)]
    except SecAggError as err:
        failed, survivors = str(err), []
        log.warning("round %d: %s", server_round, failed)
    by_node: dict[int, Message | None] = dict.fromkeys(run.train)
    by_node.update(good)
    errors = {node: why for node, why in run.failed.items() if node not in good}
    return Collected(
        by_node, accepted, [], survivors, run.downlink, run.uplink,
        failed=failed, secagg=counts, errors=errors,
    )  # fmt: skip
