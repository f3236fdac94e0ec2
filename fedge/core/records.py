"""Conversion between named numpy weights and Flower records."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedge.core import messages as m
from fedge.core.config import SERVER_ONLY_SETTINGS, RunConfig
from fedge.core.data import Preprocessing, Statistic


def weights_to_record(weights: dict[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays -> ArrayRecord (keys are qualified parameter names)."""
    return ArrayRecord(
        OrderedDict((name, Array(np.ascontiguousarray(v))) for name, v in weights.items())
    )


def with_arrays(content: RecordDict, arrays: ArrayRecord) -> RecordDict:
    """A copy of `content` whose model arrays are `arrays` (the other records are shared)."""
    return RecordDict({**dict(content.items()), m.ARRAYS: arrays})


def record_to_weights(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """ArrayRecord -> named numpy arrays."""
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def config_to_record(cfg: RunConfig, **extra: Any) -> ConfigRecord:
    """The run settings clients need, kebab-case, plus extra entries."""
    values = {k: v for k, v in cfg.to_run_config().items() if k not in SERVER_ONLY_SETTINGS}
    values.update(extra)
    return ConfigRecord(values)


def model_spec(prep: Preprocessing, num_classes: int) -> dict[str, Any]:
    """Wire entries that tell a client the model's input and the preprocessing to apply."""
    return {
        m.INPUT_SHAPE: list(prep.input_shape),
        m.NUM_CLASSES: num_classes,
        m.PREPROCESS_SHIFT: _statistic_to_wire(prep.shift),
        m.PREPROCESS_SCALE: _statistic_to_wire(prep.scale),
    }


def record_to_spec(record: ConfigRecord) -> tuple[Preprocessing, int]:
    """Inverse of model_spec."""
    shape = record[m.INPUT_SHAPE]
    if not isinstance(shape, list):
        raise TypeError(f"{m.INPUT_SHAPE} must be a list of ints, got {shape!r}")
    prep = Preprocessing(
        shift=_statistic_from_wire(record[m.PREPROCESS_SHIFT]),
        scale=_statistic_from_wire(record[m.PREPROCESS_SCALE]),
        input_shape=tuple(as_int(d) for d in shape),
    )
    return prep, as_int(record[m.NUM_CLASSES])


def _statistic_to_wire(value: Statistic) -> float | list[float]:
    return [float(v) for v in value] if isinstance(value, tuple) else float(value)


def _statistic_from_wire(value: object) -> Statistic:
    if isinstance(value, list):
        return tuple(as_float(v) for v in value)
    return as_float(value)


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
