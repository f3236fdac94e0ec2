"""Minify stage: the same graph with short tensor and node names and no shape annotations.

At a few thousand parameters, names (`model.classifier.0.weight_quantized_scale`, ...) and the
shape annotations `quant_pre_process` leaves behind make up about half of an int8 file. The
device contract's input and output names are kept; nothing else in the graph changes, and the
result must give exactly the same outputs.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx

from fedge.core.config import RunConfig
from fedge.core.ort import make_session


@dataclass(frozen=True)
class MinifyConfig:
    """How to minify."""

    enabled: bool = True  # False ships the names as exported (for debugging a model)

    @classmethod
    def from_run(cls, cfg: RunConfig) -> MinifyConfig:
        """No run setting changes minification."""
        return cls()


def _short_names() -> Iterator[str]:
    """a, b, ..., z, A, ..., Z, ba, bb, ...: base-52 strings, shortest first."""
    letters = string.ascii_lowercase + string.ascii_uppercase
    count = 0
    while True:
        value, name = count, ""
        while True:
            value, digit = divmod(value, len(letters))
            name = letters[digit] + name
            if value == 0:
                break
        count += 1
        yield name


def minified_size(model_bytes: bytes) -> int:
    """Bytes of the model after minification (what the guard compares: names are not weights)."""
    return len(_renamed(onnx.load_from_string(model_bytes)).SerializeToString())


def minify(model_bytes: bytes, config: MinifyConfig, check_x: np.ndarray) -> bytes:
    """Rename every internal tensor and node, drop value_info; outputs must stay bit-identical.

    `check_x`: raw inputs on which the minified model is compared with the original.
    """
    if not config.enabled:
        return model_bytes
    proto = _renamed(onnx.load_from_string(model_bytes))
    onnx.checker.check_model(proto, full_check=True)
    small = proto.SerializeToString()
    _check_same_outputs(model_bytes, small, check_x)
    return small


def _renamed(proto: onnx.ModelProto) -> onnx.ModelProto:
    """`proto` (changed in place) with short names and no value_info."""
    graph = proto.graph
    keep = {value.name for value in [*graph.input, *graph.output]}
    fresh = (name for name in _short_names() if name not in keep)
    renamed: dict[str, str] = {}

    def new(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in renamed:
            renamed[name] = next(fresh)
        return renamed[name]

    for tensor in graph.initializer:
        tensor.name = new(tensor.name)
    for index, node in enumerate(graph.node):
        node.name = f"n{index}"
        node.input[:] = [new(name) for name in node.input]
        node.output[:] = [new(name) for name in node.output]
        node.doc_string = ""
    del graph.value_info[:]
    graph.name = "fedge"
    return proto


def _check_same_outputs(before: bytes, after: bytes, x: np.ndarray) -> None:
    original, minified = make_session(before), make_session(after)
    feed = {original.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)}
    for expected, got in zip(original.run(None, feed), minified.run(None, feed), strict=True):
        if not np.array_equal(expected, got):
            raise RuntimeError("the minified model's outputs differ from the original's")
