"""Replies are untrusted input: each becomes a checked, typed value or a rejection with its reason.

A node's reply may lack a record, carry metrics of the wrong type or an array that does not
decode: whatever it holds fails that node for that round (or that query), never the run. Every
function here reads a reply only through these checks; nothing else on the server indexes a
reply's records.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord
from flwr.supercore.differential_privacy import KEY_NORM_BIT

from fedge.core import messages as m
from fedge.core.config import RunConfig

MAX_PARTITION = 1_000_000  # a partition id beyond this is not one


def replies_by_node(sent: list[Message], replies: list[Message]) -> dict[int, Message | None]:
    """Each destination node of `sent` -> its reply (matched by message id), or None if none came."""
    by_id = {msg.metadata.message_id: msg.metadata.dst_node_id for msg in sent}
    answers: dict[int, Message | None] = {msg.metadata.dst_node_id: None for msg in sent}
    for reply in replies:
        answers[by_id.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)] = reply
    return answers


class BadReplyError(ValueError):
    """A reply that does not hold what its message type promises; the text says what."""


@dataclass(frozen=True)
class Rejection:
    """A node's reply refused for a round, and why (a row of results.json's rejections)."""

    node_id: int
    partition_id: int | None
    reason: str

    def row(self) -> dict[str, Any]:
        """results.json's form."""
        return {"node_id": self.node_id, "partition_id": self.partition_id, "reason": self.reason}


def metrics_of(reply: Message) -> MetricRecord:
    """The reply's `metrics` record (BadReplyError if it has none)."""
    if reply.has_error():
        raise BadReplyError(f"error reply: {reply.error.reason}")
    metrics = reply.content.metric_records.get(m.METRICS)
    if metrics is None:
        raise BadReplyError(f"malformed reply: no {m.METRICS!r} record")
    return metrics


def status_of(reply: Message) -> ConfigRecord:
    """The reply's `status` record (BadReplyError if it has none)."""
    status = reply.content.config_records.get(m.STATUS)
    if status is None:
        raise BadReplyError(f"malformed reply: no {m.STATUS!r} record")
    return status


def count(values: MetricRecord | ConfigRecord, key: str, low: int = 0, high: int = 2**62) -> int:
    """An integer field in [low, high] (BadReplyError naming the key and the value otherwise)."""
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReplyError(f"malformed reply: {key!r} is {value!r}, not an integer")
    if not (math.isfinite(value) and value == int(value) and low <= value <= high):
        raise BadReplyError(
            f"malformed reply: {key!r} is {value!r}, not an integer in [{low}, {high}]"
        )
    return int(value)


def number(
    values: MetricRecord | ConfigRecord, key: str, low: float = -math.inf, infinite: bool = False
) -> float:
    """A finite number of at least `low` (BadReplyError naming the key and the value otherwise).

    `infinite`: +inf is a value too (a DP-SGD client without noise spends an infinite epsilon).
    """
    value = values.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadReplyError(f"malformed reply: {key!r} is {value!r}, not a number")
    if infinite and value == math.inf:
        return math.inf
    if not (math.isfinite(value) and value >= low):
        raise BadReplyError(
            f"malformed reply: {key!r} is {value!r}, not a finite number >= {low:g}"
        )
    return float(value)


def text(values: ConfigRecord, key: str, limit: int = 300) -> str:
    """A printable string field, cut to `limit` characters (terminal escapes dropped)."""
    value = values.get(key)
    if not isinstance(value, str):
        raise BadReplyError(f"malformed reply: {key!r} is {type(value).__name__}, not text")
    return printable(value, limit)


def printable(value: object, limit: int = 300) -> str:
    """A node's free text as the log and the report may show it: printable, at most `limit`."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^\s*([\w.]*(?:Error|Exception)): (.+)$")


def error_text(reason: object, limit: int = 300) -> str:
    """A node's error reason, printable: the last exception line when it holds a traceback.

    Ray's simulation wraps a client's error in its actor's traceback, whose first 300
    characters name only the actor; the line that says what went wrong is the last one raised.
    """
    lines = _ANSI.sub("", str(reason)).splitlines()
    raised = [f"{m[1]}: {m[2]}" for line in lines if (m := _RAISED.match(line))]
    return printable(raised[-1] if raised else str(reason), limit)


def partition_of(reply: Message | None) -> int | None:
    """The partition a successful reply names, or None (no reply, an error, or no valid id)."""
    if reply is None:
        return None
    try:
        return count(metrics_of(reply), m.PARTITION_ID, 0, MAX_PARTITION)
    except BadReplyError:
        return None


def train_metric_keys(cfg: RunConfig) -> tuple[str, ...]:
    """What every train reply's metrics hold under these settings, and nothing else."""
    keys = [m.NUM_EXAMPLES, m.TRAIN_LOSS, m.PARTITION_ID, m.UNIT_WEIGHT]
    if cfg.dp == "local":
        keys += [m.DP_EPSILON, m.DP_NOISE]
    if cfg.dp == "central" and cfg.dp_clipping == "client" and cfg.dp_clip_mode == "adaptive":
        keys.append(KEY_NORM_BIT)  # Flower's adaptive clipping mod reports whether it clipped
    return tuple(keys)


def checked_train_metrics(reply: Message, cfg: RunConfig) -> MetricRecord:
    """The train reply's metrics, exactly the keys the settings declare, each checked.

    Flower's aggregation requires every reply to carry the same metric keys: a missing or an
    extra key would stop the round for everyone, so a reply's record is rebuilt from the
    declared keys (BadReplyError naming the first missing or malformed one).
    """
    metrics = metrics_of(reply)
    checked: dict[str, int | float | list[int] | list[float]] = {
        m.NUM_EXAMPLES: count(metrics, m.NUM_EXAMPLES, 1),
        m.PARTITION_ID: count(metrics, m.PARTITION_ID, 0, MAX_PARTITION),
    }
    for key in train_metric_keys(cfg):
        if key in (m.NUM_EXAMPLES, m.PARTITION_ID):
            continue
        if key == KEY_NORM_BIT:
            checked[key] = count(metrics, key, 0, 1)
        elif key == m.UNIT_WEIGHT:
            checked[key] = count(metrics, key, 1, 1)
        else:
            checked[key] = number(metrics, key, 0.0, infinite=key == m.DP_EPSILON)
    return MetricRecord(checked)


def arrays_payload(reply: Message, name: str) -> dict[str, np.ndarray]:
    """The numpy arrays of the reply's ArrayRecord `name` (BadReplyError if missing or undecodable)."""
    record = reply.content.array_records.get(name)
    if record is None:
        raise BadReplyError(f"malformed reply: no {name!r} array record")
    try:
        return {key: array.numpy() for key, array in record.items()}
    except Exception as err:  # noqa: BLE001  (whatever the bytes hold: they do not decode)
        raise BadReplyError(
            f"malformed reply: arrays do not decode ({type(err).__name__})"
        ) from None
