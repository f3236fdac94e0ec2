"""Read raw samples for inference from .npy, .csv, .json or stdin JSON: bounded, in parts, no pickle.

A `.npy` header is checked against the file's size before anything is allocated, and the
samples are read a chunk of rows at a time; a CSV is parsed a chunk of lines at a time; JSON
(files and stdin) is capped in size, refuses NaN/Infinity, numbers that overflow and deep
nesting. Every problem is an InputError with a one-line message.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fedge.client.runtime.predictor import InputError

FORMATS = ".npy, .csv, .json or - (JSON on stdin)"
MAX_JSON_BYTES = 16 << 20  # JSON costs ~16x its size in Python objects; use .npy/.csv beyond
MAX_NPY_HEADER = 10_000
ROWS = 4096  # samples per part read from a file


def read_input_parts(source: str, sample_size: int, rows: int = ROWS) -> Iterator[np.ndarray]:
    """Samples from a file or stdin as arrays of at most `rows` samples (JSON: one array).

    Parameters
    ----------
    source
        A .npy, .csv or .json path, or "-" for JSON on stdin.
    sample_size
        Values in one sample: a file whose size cannot be whole samples is refused unread.
    rows
        Samples per array read from .npy and .csv files.

    """
    if source == "-":
        yield from_json(_read_capped(sys.stdin.buffer, "stdin"), "stdin")
        return
    path = Path(source)
    if not path.is_file():
        raise InputError(f"input file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            yield from _npy_parts(path, sample_size, rows)
        elif suffix == ".csv":
            yield from _csv_parts(path, sample_size, rows)
        elif suffix == ".json":
            with open(path, "rb") as handle:
                yield from_json(_read_capped(handle, str(path)), str(path))
        else:
            raise InputError(f"unsupported input {path.name!r}; allowed: {FORMATS}")
    except (OSError, EOFError) as err:
        raise InputError(f"cannot read {path}: {err}") from None


def require_finite(array: np.ndarray, where: str) -> np.ndarray:
    """Refuse NaN and Inf (numeric arrays only; dtype problems are the Predictor's to report)."""
    if array.dtype.kind in "fc" and not np.isfinite(array).all():
        raise InputError(
            f"{where}: input holds NaN or Inf (a value beyond float32's +-3.4e38 becomes Inf)"
        )
    return array


def parse_json(data: bytes | str, where: str) -> Any:
    """JSON with every number a float: NaN, Infinity and deep nesting refused, 10**400 -> inf."""
    try:
        return json.loads(data, parse_int=float, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"{where} nests arrays or objects too deeply") from None
    except ValueError as err:  # UnicodeDecodeError included
        raise InputError(f"{where} is not JSON: {str(err)[:200]}") from None


def to_samples(value: Any, where: str) -> np.ndarray:
    """Parsed JSON samples (nested lists of JSON numbers only) as a finite float32 array."""
    try:
        require_numbers(value, where)
    except RecursionError:
        raise InputError(f"{where} nests arrays too deeply") from None
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as err:
        detail = str(err).splitlines()[0][:120]
        raise InputError(
            f"{where}: samples must be equal-length lists of numbers ({detail})"
        ) from None
    return require_finite(array, where)


def require_numbers(value: Any, where: str) -> None:
    """Refuse anything but nested lists of numbers as `parse_json` makes them (floats).

    numpy would turn the string "1" and the boolean true into 1.0; a request that sends them
    is wrong about the model's input, so it is told rather than answered.
    """
    if type(value) is float:
        return
    if type(value) is not list:
        raise InputError(f"{where}: {_kind(value)} is not a number; samples are lists of numbers")
    kinds = set(map(type, value))  # one pass in C over a row of values
    if kinds <= {float}:
        return
    for item in value:
        if type(item) is not float:
            require_numbers(item, where)


def _kind(value: Any) -> str:
    """How a JSON value that is not a number reads in an error message."""
    if isinstance(value, str | bool):
        return f"{json.dumps(value)[:40]} ({'a boolean' if type(value) is bool else 'a string'})"
    return "null" if value is None else "an object"


def from_json(text: bytes | str, where: str) -> np.ndarray:
    """Parse JSON samples (a list of samples, or {"inputs": [...]}) into a float32 array."""
    value = parse_json(text, where)
    if isinstance(value, dict):
        if "inputs" not in value:
            raise InputError(f'{where}: expected a list of samples or {{"inputs": [...]}}')
        value = value["inputs"]
    return to_samples(value, where)


def _read_capped(handle: BinaryIO, where: str) -> bytes:
    data = handle.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise InputError(
            f"{where} has more than {MAX_JSON_BYTES} bytes of JSON; use a .npy or .csv file"
        )
    return data


def _npy_parts(path: Path, sample_size: int, rows: int) -> Iterator[np.ndarray]:
    """Rows of a .npy file, its header checked against the file size before reading any."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle, max_header_size=MAX_NPY_HEADER)
        except (ValueError, EOFError, SyntaxError, TypeError) as err:
            raise InputError(f"{path} is not a valid .npy file: {str(err)[:160]}") from None
        if dtype.hasobject or dtype.kind not in "iuf":
            raise InputError(f"{path} holds {dtype} values; expected float or int values")
        count, offset = math.prod(shape), handle.tell()
        if offset + count * dtype.itemsize != size:
            raise InputError(
                f"{path}: the header declares shape {shape} ({count * dtype.itemsize} bytes of "
                f"{dtype}) but the file has {size - offset} bytes of data"
            )
        if count == 0:
            raise InputError(f"{path} holds no samples (shape {shape})")
        per_row = math.prod(shape[1:]) if len(shape) >= 2 else count
        if per_row % sample_size and count != sample_size:
            raise InputError(
                f"input shape {shape} does not fit: samples of {sample_size} values expected"
            )
        if len(shape) < 2:  # one sample without a batch axis
            yield np.fromfile(handle, dtype=dtype, count=count).reshape(shape)
            return
        if fortran:  # column-major: rows are not contiguous, so map the file instead
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            for start in range(0, shape[0], rows):
                yield np.array(mapped[start : start + rows])
            return
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            yield np.fromfile(handle, dtype=dtype, count=n * per_row).reshape(n, *shape[1:])


def _csv_parts(path: Path, sample_size: int, rows: int) -> Iterator[np.ndarray]:
    """Chunks of CSV lines; a line longer than a sample could be is refused, not read whole."""
    limit = 64 * sample_size + 1024
    with open(path, encoding="utf-8", errors="replace") as handle:
        number, lines = 0, []
        while True:
            line = handle.readline(limit + 1)
            if len(line) > limit and not line.endswith("\n"):
                raise InputError(f"{path}: line {number + 1} is longer than {limit} characters")
            if line.strip():
                lines.append(line)
            number += 1
            if (not line and lines) or len(lines) >= rows:
                yield _csv_chunk(path, lines, number)
                lines = []
            if not line:
                return


def _csv_chunk(path: Path, lines: list[str], number: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.loadtxt(lines, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as err:
        detail = str(err).splitlines()[0][:160]
        raise InputError(f"cannot read {path} (lines up to {number}): {detail}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")
