"""Read raw samples for inference from .npy, .csv, .json or stdin JSON (never with pickle)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fedge.client.runtime.predictor import InputError

FORMATS = ".npy, .csv, .json or - (JSON on stdin)"


def read_inputs(source: str) -> np.ndarray:
    """Samples from a file or stdin; JSON is a list of samples or {"inputs": [...]}."""
    return require_finite(_read(source), source)


def require_finite(array: np.ndarray, where: str) -> np.ndarray:
    """Refuse NaN and Inf (numeric arrays only; dtype problems are the Predictor's to report)."""
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise InputError(f"{where}: input holds NaN or Inf")
    return array


def _read(source: str) -> np.ndarray:
    if source == "-":
        return from_json(sys.stdin.read(), "stdin")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if suffix == ".csv":
            return np.atleast_2d(np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2))
        if suffix == ".json":
            return from_json(path.read_text(), str(path))
    except (ValueError, OSError) as err:
        raise InputError(f"cannot read {path}: {err}") from err
    raise InputError(f"unsupported input {path.name!r}; allowed: {FORMATS}")


def from_json(text: str, where: str) -> np.ndarray:
    """Parse JSON samples into a numeric array."""
    try:
        value: Any = json.loads(text)
    except ValueError as err:
        raise InputError(f"{where} is not JSON: {err}") from err
    if isinstance(value, dict):
        if "inputs" not in value:
            raise InputError(f'{where}: expected a list of samples or {{"inputs": [...]}}')
        value = value["inputs"]
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as err:
        raise InputError(f"{where}: samples must be equal-length lists of numbers ({err})") from err
    return require_finite(array, where)
