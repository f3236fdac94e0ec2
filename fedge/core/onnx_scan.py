"""Find external-data references in ONNX bytes by walking the protobuf wire format (no onnx needed).

The device runtime must refuse a model whose tensors point at files on disk before
onnxruntime opens it, and must not depend on the `onnx` package to find out.
"""

from __future__ import annotations

from collections.abc import Iterator

# field numbers from onnx.proto3
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS = 5, 6, 10, 11
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
EXTERNAL = 1


class MalformedModelError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise MalformedModelError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) for each field of one message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield field, wire, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise MalformedModelError("truncated length-delimited field")
            yield field, wire, data[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > len(data):
                raise MalformedModelError("truncated fixed-width field")
        else:
            raise MalformedModelError(f"unsupported wire type {wire}")


def _tensor_refs(tensor: bytes) -> list[str]:
    name, external = "", False
    for field, _, value in _fields(tensor):
        if field == TENSOR_NAME and isinstance(value, bytes):
            name = value.decode(errors="replace")
        elif field == TENSOR_EXTERNAL_DATA or (field == TENSOR_DATA_LOCATION and value == EXTERNAL):
            external = True
    return [name or "<unnamed>"] if external else []


def _graph_refs(graph: bytes) -> list[str]:
    refs: list[str] = []
    for field, wire, value in _fields(graph):
        if wire != 2 or not isinstance(value, bytes):
            continue
        if field == GRAPH_INITIALIZER:
            refs += _tensor_refs(value)
        elif field == GRAPH_SPARSE_INITIALIZER:
            for sub, _, part in _fields(value):
                if sub in (SPARSE_VALUES, SPARSE_INDICES) and isinstance(part, bytes):
                    refs += _tensor_refs(part)
        elif field == GRAPH_NODE:
            for sub, _, attr in _fields(value):
                if sub == NODE_ATTRIBUTE and isinstance(attr, bytes):
                    refs += _attribute_refs(attr)
    return refs


def _attribute_refs(attr: bytes) -> list[str]:
    refs: list[str] = []
    for field, _, value in _fields(attr):
        if not isinstance(value, bytes):
            continue
        if field in (ATTR_T, ATTR_TENSORS):
            refs += _tensor_refs(value)
        elif field in (ATTR_G, ATTR_GRAPHS):
            refs += _graph_refs(value)
    return refs


def external_data_refs(model: bytes) -> list[str]:
    """Names of tensors stored outside the model bytes (empty for a self-contained model)."""
    refs: list[str] = []
    for field, wire, value in _fields(model):
        if field == MODEL_GRAPH and wire == 2 and isinstance(value, bytes):
            refs += _graph_refs(value)
    return refs
