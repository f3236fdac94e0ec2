"""Find external-data references in ONNX bytes by walking the protobuf wire format (no onnx needed).

The device runtime must refuse a model whose tensors point at files on disk before
onnxruntime opens it, and must not depend on the `onnx` package to find out. The walk is
driven by one table, `CONTAINS`: for every message type of onnx.proto that can hold a
TensorProto, directly or through other messages, every field that leads towards one. A
TensorProto can sit in a graph's initializers and sparse initializers, in node attributes of
every kind (tensor, tensors, sparse_tensor, sparse_tensors, graph, graphs), in model-local
functions (their nodes and their attributes' default values) and in training_info graphs;
the table covers all of them, to any depth (up to MAX_DEPTH nested messages).
"""

from __future__ import annotations

from collections.abc import Iterator

MAX_DEPTH = 64  # nested messages; fedge's models use fewer than 10

# Message kinds, and for each the fields (onnx.proto3 numbers) that lead towards TensorProtos.
MODEL, GRAPH, NODE, ATTRIBUTE, FUNCTION, TRAINING, SPARSE, TENSOR = (
    "model",
    "graph",
    "node",
    "attribute",
    "function",
    "training_info",
    "sparse_tensor",
    "tensor",
)
CONTAINS: dict[str, dict[int, tuple[str, str]]] = {
    MODEL: {7: ("graph", GRAPH), 20: ("training_info", TRAINING), 25: ("functions", FUNCTION)},
    GRAPH: {1: ("node", NODE), 5: ("initializer", TENSOR), 15: ("sparse_initializer", SPARSE)},
    NODE: {5: ("attribute", ATTRIBUTE)},
    ATTRIBUTE: {
        5: ("t", TENSOR),
        6: ("g", GRAPH),
        10: ("tensors", TENSOR),
        11: ("graphs", GRAPH),
        22: ("sparse_tensor", SPARSE),
        23: ("sparse_tensors", SPARSE),
    },
    FUNCTION: {7: ("node", NODE), 11: ("attribute_proto", ATTRIBUTE)},
    TRAINING: {1: ("initialization", GRAPH), 2: ("algorithm", GRAPH)},
    SPARSE: {1: ("values", TENSOR), 2: ("indices", TENSOR)},
    TENSOR: {},
}
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
NODE_OP_TYPE = 4  # NodeProto.op_type
NAMES = {GRAPH: 2, NODE: 3, ATTRIBUTE: 1, FUNCTION: 1}  # the `name` field, for error messages


class MalformedModelError(ValueError):
    """The bytes are not a well-formed protobuf message (or nest deeper than MAX_DEPTH)."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
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


def _fields(data: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value) for each field of one message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise MalformedModelError("field number 0")
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
        else:  # groups (3, 4) are not in onnx.proto; anything else is not protobuf
            raise MalformedModelError(f"unsupported wire type {wire}")


def _is_external(tensor: memoryview) -> tuple[bool, str]:
    """Whether a TensorProto stores its data outside the model, and its name.

    Any external_data entry, or any data_location other than DEFAULT (0), counts: protobuf
    parsers truncate enum varints, so only 0 is known to be harmless.
    """
    name, external = "", False
    for field, _, value in _fields(tensor):
        if field == TENSOR_NAME and isinstance(value, memoryview):
            name = bytes(value[:200]).decode(errors="replace")
        elif field == TENSOR_EXTERNAL_DATA or (field == TENSOR_DATA_LOCATION and value != 0):
            external = True
    return external, name


def _label(kind: str, field_name: str, message: memoryview) -> str:
    """`field_name`, with the message's own name when it has one ('node "Constant_3"')."""
    number = NAMES.get(kind)
    if number is not None:
        for field, wire, value in _fields(message):
            if field == number and wire == 2 and isinstance(value, memoryview) and len(value):
                return f'{field_name} "{bytes(value[:80]).decode(errors="replace")}"'
    return field_name


def external_data_refs(model: bytes) -> list[str]:
    """Where tensors store data outside the model bytes (empty for a self-contained model).

    Each entry is a path such as `graph > node "c" > attribute "sparse_value" > sparse_tensor >
    values "v"`. Raises MalformedModelError for bytes that are not a protobuf message or that
    nest messages deeper than MAX_DEPTH.
    """
    refs: list[str] = []
    stack: list[tuple[str, memoryview, tuple[str, ...]]] = [(MODEL, memoryview(model), ())]
    while stack:
        kind, message, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise MalformedModelError(f"messages nest deeper than {MAX_DEPTH}")
        if kind == TENSOR:
            external, name = _is_external(message)
            if external:
                refs.append(" > ".join(path) + (f' "{name}"' if name else ""))
            continue
        for field, wire, value in _fields(message):
            child = CONTAINS[kind].get(field)
            if child is None or wire != 2 or not isinstance(value, memoryview):
                continue
            field_name, child_kind = child
            stack.append((child_kind, value, (*path, _label(child_kind, field_name, value))))
    return refs


def has_graph(model: bytes) -> bool:
    """Whether the bytes hold a ModelProto with a graph (what onnxruntime needs to run it)."""
    return any(field == 7 and wire == 2 for field, wire, _ in _fields(memoryview(model)))


def op_types(model: bytes) -> set[str]:
    """The op types of the main graph's nodes (ModelProto.graph.node[*].op_type)."""
    ops: set[str] = set()
    for field, wire, graph in _fields(memoryview(model)):
        if field != 7 or wire != 2 or not isinstance(graph, memoryview):
            continue
        for g_field, g_wire, node in _fields(graph):
            if g_field != 1 or g_wire != 2 or not isinstance(node, memoryview):
                continue
            for n_field, n_wire, value in _fields(node):
                if n_field == NODE_OP_TYPE and n_wire == 2 and isinstance(value, memoryview):
                    ops.add(bytes(value[:128]).decode(errors="replace"))
    return ops
