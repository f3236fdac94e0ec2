"""Conversion between named numpy weights and Flower records."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedge.core.config import RunConfig
from fedge.core.messages import SERVER_ONLY_SETTINGS


def weights_to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord (keys are qualified parameter names)."""
    return ArrayRecord(
        OrderedDict((name, Array(np.ascontiguousarray(v))) for name, v in weights.items())
    )


def record_to_weights(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays."""
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def config_to_record(cfg: RunConfig, **extra: Any) -> ConfigRecord:
    """The run settings clients need, kebab-case, plus extra entries."""
    values = {k: v for k, v in cfg.to_run_config().items() if k not in SERVER_ONLY_SETTINGS}
    values.update(extra)
    return ConfigRecord(values)


def record_to_config(record: ConfigRecord) -> RunConfig:
    """Rebuild the typed run config on a client (extra wire keys such as server-round ignored)."""
    known = RunConfig().to_run_config()
    return RunConfig.from_run_config({k: v for k, v in record.items() if k in known})


def as_float(value: object) -> float:
    """A record value that must be a number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"expected a number in the record, got {value!r}")


def as_int(value: object) -> int:
    """A record value that must be an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer in the record, got {value!r}")


def as_bytes(value: object) -> bytes:
    """A record value that must be bytes."""
    if isinstance(value, bytes):
        return value
    raise TypeError(f"expected bytes in the record, got {type(value).__name__}")
