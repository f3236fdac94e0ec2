"""The schema of a checkpointed round row: every field's type and range, checked on resume.

A resumed run reads its round log back from a checkpoint and goes on to train, compress,
deploy and report with it. A field of the wrong type or out of range (an edited or damaged
file) would surface only at the end, in the report, and at every later resume; so each row
is checked field by field when the checkpoint is read, and a bad one makes the checkpoint
count as damaged (the run falls back to the one before).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _share(value: Any) -> bool:
    return _real(value) and 0.0 <= value <= 1.0


def _seconds(value: Any) -> bool:
    return _real(value) and value >= 0.0


def _optional(check: Check) -> Check:
    return lambda value: value is None or check(value)


def _counts(value: Any) -> bool:
    return isinstance(value, list) and all(_count(v) for v in value)


def _failure(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and _optional(_count)(value.get("partition_id"))
        and _optional(_count)(value.get("node_id"))
        and isinstance(value.get("reason"), str)
    )


def _failures(value: Any) -> bool:
    return isinstance(value, list) and all(_failure(v) for v in value)


def _injected(value: Any) -> bool:
    roles = ("byzantine", "dropped", "stragglers")
    return (
        isinstance(value, dict)
        and set(value) == set(roles)
        and all(_counts(value[r]) for r in roles)
    )


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _loss(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(
        value, bool
    )  # inf/nan: a diverged round


REQUIRED: dict[str, Check] = {
    "round": _count,
    "accuracy": _share,
    "loss": _loss,
    "train_loss": _optional(_loss),
    "clients_ok": _count,
    "clients_failed": _failures,
    "clients_rejected": _counts,
    "skipped": _optional(_text),
    "sampled": _optional(_counts),
    "downlink_bytes": _count,
    "uplink_bytes": _count,
    "injected": _injected,
    "seconds": _seconds,
}
OPTIONAL: dict[str, Check] = {  # privacy fields (fedge.privacy.ledger) and the wall clock
    "dp_clipping_norm": _optional(_real),
    "dp_noise_effective": _optional(_real),
    "dp_epsilon": _optional(_loss),  # inf: no finite guarantee, stated as such
    "dp_noise_min": _optional(_real),
    "elapsed_s": _seconds,
}


def check_round_row(row: Any, number: int) -> None:
    """ValueError naming the first field of round row `number` that is missing or malformed."""
    if not isinstance(row, dict):
        raise ValueError(f"round row {number} is not an object")
    if row.get("round") != number:
        raise ValueError(f"round row {number} says round {row.get('round')!r}")
    for key, check in REQUIRED.items():
        if key not in row:
            raise ValueError(f"round row {number} lacks {key!r}")
        if not check(row[key]):
            raise ValueError(f"round row {number} has a malformed {key!r}: {row[key]!r}")
    for key in row.keys() - REQUIRED.keys():
        if key not in OPTIONAL:
            raise ValueError(f"round row {number} has an unknown field {key!r}")
        if not OPTIONAL[key](row[key]):
            raise ValueError(f"round row {number} has a malformed {key!r}: {row[key]!r}")


def check_rejection(row: Any) -> None:
    """ValueError if a rejected-update row is malformed."""
    if not (
        isinstance(row, dict)
        and _count(row.get("round"))
        and _optional(_count)(row.get("partition_id"))
        and isinstance(row.get("reason"), str)
    ):
        raise ValueError(f"a rejected-update row is malformed: {str(row)[:200]}")
