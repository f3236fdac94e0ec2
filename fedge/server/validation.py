"""Validation of client updates before aggregation: structure, finiteness, norm outliers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from fedge.core import messages as m
from fedge.core.records import as_int, record_to_weights


@dataclass(frozen=True)
class Checked:
    """One reply that passed the structural checks, with its update norm."""

    reply: Message
    node_id: int
    partition_id: int
    norm: float


def validate_updates(
    replies: dict[int, Message],
    reference: dict[str, np.ndarray],
    norm_outlier_factor: float,
) -> tuple[list[Checked], list[dict[str, Any]]]:
    """Split successful replies (node id -> reply) into accepted updates and rejections.

    Rules, in order: the reply has an `arrays` record and metrics with a positive
    num-examples and a partition id; the same keys as the global model, each with its shape
    and dtype; every value finite. Then the norm rule: an update whose L2 distance from the
    global model exceeds `norm_outlier_factor` x the median over this round's structurally
    valid updates is rejected (0 switches the rule off). Accepted updates are sorted by
    partition id, so aggregation does not depend on the order replies arrived in.
    """
    accepted: list[Checked] = []
    rejected: list[dict[str, Any]] = []
    for node_id, reply in replies.items():
        partition = _partition_id(reply)
        reason, weights = _structural_problem(reply, reference)
        if partition is None and reason is None:
            reason = f"malformed reply: {m.PARTITION_ID!r} is not an integer"
        if reason is not None or partition is None:
            rejected.append({"node_id": node_id, "partition_id": partition, "reason": reason})
            continue
        norm = float(
            np.sqrt(
                sum(
                    float(np.sum((w.astype(np.float64) - reference[k]) ** 2))
                    for k, w in weights.items()
                    if np.issubdtype(w.dtype, np.floating)
                )
            )
        )
        accepted.append(Checked(reply, node_id, partition, norm))
    if norm_outlier_factor > 0 and accepted:
        median = float(np.median([c.norm for c in accepted]))
        limit = norm_outlier_factor * median
        if median > 0:
            outliers = [c for c in accepted if c.norm > limit]
            accepted = [c for c in accepted if c.norm <= limit]
            rejected += [
                {
                    "node_id": c.node_id,
                    "partition_id": c.partition_id,
                    "reason": f"update norm {c.norm:.4g} > {norm_outlier_factor:g} x round median "
                    f"{median:.4g} (norm-outlier-factor)",
                }
                for c in outliers
            ]
    accepted.sort(key=lambda c: (c.partition_id, c.node_id))
    return accepted, rejected


def _partition_id(reply: Message) -> int | None:
    metrics = reply.content.metric_records.get(m.METRICS)
    if metrics is None or m.PARTITION_ID not in metrics:
        return None
    try:
        return as_int(metrics[m.PARTITION_ID])
    except TypeError:
        return None


def _structural_problem(
    reply: Message, reference: dict[str, np.ndarray]
) -> tuple[str | None, dict[str, np.ndarray]]:
    """Why the reply cannot be aggregated (None if it can), and its weights when it can."""
    content = reply.content
    if m.ARRAYS not in content.array_records:
        return f"malformed reply: no {m.ARRAYS!r} array record", {}
    metrics = content.metric_records.get(m.METRICS)
    if metrics is None or m.PARTITION_ID not in metrics or m.NUM_EXAMPLES not in metrics:
        return f"malformed reply: metrics need {m.NUM_EXAMPLES!r} and {m.PARTITION_ID!r}", {}
    examples = metrics[m.NUM_EXAMPLES]
    if not isinstance(examples, int | float) or not examples > 0:
        return f"num-examples must be > 0, got {examples!r}", {}
    try:
        weights = record_to_weights(content.array_records[m.ARRAYS])
    except Exception as err:  # a record whose bytes do not decode to an array
        return f"arrays do not decode: {err}", {}
    missing, unexpected = (
        sorted(set(reference) - set(weights)),
        sorted(set(weights) - set(reference)),
    )
    if missing or unexpected:
        return f"wrong keys: missing {missing}, unexpected {unexpected}", {}
    for key, ref in reference.items():
        value = weights[key]
        if value.shape != ref.shape:
            return f"weight {key!r} has shape {value.shape}, expected {ref.shape}", {}
        if value.dtype != ref.dtype:
            return f"weight {key!r} has dtype {value.dtype}, expected {ref.dtype}", {}
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            bad = "NaN" if np.isnan(value).any() else "Inf"
            return f"weight {key!r} contains {bad}", {}
    return None, weights
