"""Validation of client updates before aggregation: structure, finiteness, norm outliers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.server.replies import BadReplyError, arrays_payload, checked_train_metrics, partition_of


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
    cfg: RunConfig,
) -> tuple[list[Checked], list[dict[str, Any]]]:
    """Split successful replies (node id -> reply) into accepted updates and rejections.

    Rules, in order: the reply's metrics hold exactly the keys the settings declare
    (replies.train_metric_keys), each of its type and range (an accepted reply's record is
    rebuilt from them, so Flower's aggregation sees the same keys in every reply); it has an
    `arrays` record with the same keys as the global model, each with its shape and dtype;
    every value finite. Then the norm rule: an update whose L2 distance from the
    global model exceeds `norm_outlier_factor` x the median over this round's structurally
    valid updates is rejected (0 switches the rule off). Accepted updates are sorted by
    partition id, so aggregation does not depend on the order replies arrived in.
    """
    accepted: list[Checked] = []
    rejected: list[dict[str, Any]] = []
    for node_id, reply in replies.items():
        partition = partition_of(reply)
        try:
            metrics = checked_train_metrics(reply, cfg)
        except BadReplyError as err:
            rejected.append({"node_id": node_id, "partition_id": partition, "reason": str(err)})
            continue
        reason, weights = _structural_problem(reply, reference)
        if reason is not None or partition is None:
            rejected.append({"node_id": node_id, "partition_id": partition, "reason": reason})
            continue
        reply.content.metric_records[m.METRICS] = metrics
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


def _structural_problem(
    reply: Message, reference: dict[str, np.ndarray]
) -> tuple[str | None, dict[str, np.ndarray]]:
    """Why the reply cannot be aggregated (None if it can), and its weights when it can."""
    try:
        weights = arrays_payload(reply, m.ARRAYS)
    except BadReplyError as err:
        return str(err), {}
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
