"""What an ONNX model needs on a device at batch 1: parameters, MACs, flash and activation arena."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import onnx
from onnx import helper, numpy_helper, shape_inference

log = logging.getLogger("fedge")

# Ops whose multiply-accumulates are counted, and the input index of their weight.
MAC_WEIGHT = {
    "Conv": 1,
    "ConvInteger": 1,
    "QLinearConv": 3,
    "Gemm": 1,
    "MatMul": 1,
    "MatMulInteger": 1,
    "QLinearMatMul": 3,
    "QGemm": 3,  # onnxruntime's contrib op (QOperator format)
}
CONV_OPS = ("Conv", "ConvInteger", "QLinearConv")
BIAS_INPUT = {"Conv": 2, "QLinearConv": 8, "Gemm": 2, "QGemm": 6}  # parameters too
# onnxruntime contrib ops whose output has their first input's shape and type.
SAME_SHAPE = ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax")
QDQ = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Resources:
    """A model's device resources at batch 1 (see `measure` for what each counts)."""

    params: int  # elements of the MAC ops' weights and biases
    macs: int  # multiply-accumulates of one inference
    flash_bytes: int  # the serialized model, as shipped
    arena_bytes: int  # peak bytes of live activations: what a static planner allocates
    traffic_bytes: int = 0  # bytes one inference moves: weights read once, activations each
    # written once and read by every consumer (0: not measured, an older row)


def measure(model: bytes) -> Resources:
    """Parameters, MACs, flash bytes and the activation arena of an ONNX model at batch 1.

    Counted: MACs of Conv, ConvInteger, QLinearConv (output elements x input channels per group
    x kernel size) and of Gemm, MatMul, MatMulInteger, QLinearMatMul (output elements x the
    shared inner dimension); bias additions, elementwise ops, pooling and softmax are not.
    Parameters: elements of those ops' constant weights and biases (through a DequantizeLinear
    in QDQ graphs), not scales or zero points. Flash: `len(model)`. Arena: `arena_bytes`.
    ValueError for a tensor whose type or shape inference cannot tell at batch 1.
    """
    proto = at_batch_one(onnx.load_from_string(model))
    return Resources(
        params=count_params(proto),
        macs=count_macs(proto),
        flash_bytes=len(model),
        arena_bytes=arena_bytes(proto),
        traffic_bytes=traffic_bytes(proto),
    )


def measured(model: bytes, what: str) -> Resources | None:
    """`measure`, or None with a warning naming `what` when the graph defeats it.

    Resources are measurements for the report: a graph they cannot be read from must not stop
    compression.
    """
    try:
        return measure(model)
    except Exception as error:  # noqa: BLE001  (any graph it cannot read: a figure, not a stop)
        log.warning("resources of %s not measured: %s: %s", what, type(error).__name__, error)
        return None


def batch_one_copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` whose inputs' and outputs' unfixed leading dimension is 1."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for value in (*copy.graph.input, *copy.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    return copy


def at_batch_one(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with a symbolic leading input/output dimension set to 1, shapes inferred.

    onnx's shape inference does not know onnxruntime's contrib ops; the outputs of the ones a
    QOperator graph holds (QGemm, and unary ops keeping their input's shape) are filled in here,
    then inference runs on from them.
    """
    inferred = shape_inference.infer_shapes(batch_one_copy(proto), data_prop=True)
    for _ in range(len(inferred.graph.node)):
        known = _known_values(inferred.graph)
        missing = [n for n in inferred.graph.node if n.output and n.output[0] not in known]
        filled = [v for v in (_contrib_output(n, known) for n in missing) if v is not None]
        if not filled:
            break
        inferred.graph.value_info.extend(filled)
        inferred = shape_inference.infer_shapes(inferred, data_prop=True)
    return inferred


def _known_values(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    """Tensors with a known type, by name (initializers as value infos)."""
    known = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    known = {name: v for name, v in known.items() if v.type.tensor_type.elem_type}
    for t in graph.initializer:
        known[t.name] = helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    return known


def _contrib_output(
    node: onnx.NodeProto, known: dict[str, onnx.ValueInfoProto]
) -> onnx.ValueInfoProto | None:
    """The output of a contrib op whose inputs are known (None: not one of ours, or not yet)."""
    names = [node.input[i] if i < len(node.input) else "" for i in (0, 3, 8)]
    first, weight, y_zero = (known.get(name) for name in names)
    if first is None or node.domain != "com.microsoft":
        return None
    dims = _dims(first.type.tensor_type)
    elem = first.type.tensor_type.elem_type
    if node.op_type in SAME_SHAPE:
        return helper.make_tensor_value_info(node.output[0], elem, dims)
    if node.op_type != "QGemm" or weight is None or dims is None:
        return None
    w = _dims(weight.type.tensor_type) or [0, 0]
    rows = dims[1] if _attr(node, "transA") else dims[0]
    cols = w[0] if _attr(node, "transB") else w[1]
    elem = y_zero.type.tensor_type.elem_type if y_zero is not None else onnx.TensorProto.FLOAT
    return helper.make_tensor_value_info(node.output[0], elem, [rows, cols])


def constant_names(graph: onnx.GraphProto) -> set[str]:
    """Initializers and what nodes compute from them alone (weights dequantized, shapes): flash."""
    constants = {t.name for t in graph.initializer}
    for node in graph.node:
        if all(name in constants for name in node.input if name):
            constants.update(node.output)
    return constants


def tensor_bytes(proto: onnx.ModelProto) -> dict[str, int]:
    """Bytes of every activation (graph inputs, node outputs not computed from constants alone).

    Element sizes come from the dtype: an int8 tensor counts one byte per element.
    """
    graph = proto.graph
    types = {v.name: v.type.tensor_type for v in (*graph.value_info, *graph.input, *graph.output)}
    constants = constant_names(graph)
    names = [v.name for v in graph.input if v.name not in constants]
    names += [out for node in graph.node for out in node.output if out and out not in constants]
    sizes = {}
    for name in names:
        kind = types.get(name)
        dims = kind.shape.dim if kind is not None and kind.HasField("shape") else None
        if kind is None or not kind.elem_type or dims is None:
            raise ValueError(f"tensor {name!r} has no inferred type and shape at batch 1")
        if not all(d.HasField("dim_value") for d in dims):
            raise ValueError(f"tensor {name!r} has a symbolic dimension at batch 1")
        itemsize = helper.tensor_dtype_to_np_dtype(kind.elem_type).itemsize
        sizes[name] = itemsize * math.prod(d.dim_value for d in dims)
    return sizes


def storage(graph: onnx.GraphProto, activations: set[str]) -> dict[str, str]:
    """Each activation's buffer, with QDQ pairs fused as an int8 runtime executes them.

    A DequantizeLinear of an activation reads its int8 input in place (its float output gets no
    buffer), and a float tensor whose only consumer is a QuantizeLinear is written as int8
    straight away. Graph inputs and outputs keep their own buffers. Float graphs map to
    themselves.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ends = {v.name for v in (*graph.input, *graph.output)}
    buffer = {name: name for name in activations}
    for node in graph.node:
        first, out = (node.input[0], node.output[0]) if node.input and node.output else ("", "")
        if first not in activations or out in ends:
            continue
        if node.op_type == "DequantizeLinear":
            buffer[out] = buffer[first]
        elif node.op_type == "QuantizeLinear" and first not in ends and len(consumers[first]) == 1:
            buffer[first] = out
    return {name: _resolve(buffer, name) for name in activations}


def _resolve(buffer: dict[str, str], name: str) -> str:
    """Follow `buffer` to the tensor that really holds `name` (chains: Q then DQ then ...)."""
    while buffer[name] != name:
        name = buffer[name]
    return name


def arena_bytes(proto: onnx.ModelProto) -> int:
    """Peak bytes of live activations over the nodes in graph order (batch 1, shapes inferred).

    A buffer is live from the node that writes it (graph inputs: from the start) to the last
    node that reads it (graph outputs: to the end), both included, so a node's inputs and
    outputs are live together (no in-place reuse). Weights and what is computed from them alone
    are flash, not arena. QDQ pairs are fused (see `storage`).
    """
    graph = proto.graph
    sizes = tensor_bytes(proto)
    buffers = storage(graph, set(sizes))
    last = len(graph.node) - 1
    live: dict[str, list[int]] = {buffers[v.name]: [0, 0] for v in graph.input if v.name in sizes}
    for step, node in enumerate(graph.node):
        for name in (*node.input, *node.output):
            if name in buffers:
                span = live.setdefault(buffers[name], [step, step])
                span[1] = step
    for value in graph.output:
        if value.name in buffers:
            live[buffers[value.name]][1] = last
    peak = 0
    for step in range(len(graph.node)):
        peak = max(peak, sum(sizes[b] for b, (lo, hi) in live.items() if lo <= step <= hi))
    return peak


def traffic_bytes(proto: onnx.ModelProto) -> int:
    """Bytes one inference moves at batch 1 (an energy estimate's memory term).

    Every weight is read once; every activation buffer (QDQ pairs fused, `storage`) is written
    once and read once per consuming node; a fused quantize or dequantize step moves nothing.
    """
    graph = proto.graph
    sizes = tensor_bytes(proto)
    buffers = storage(graph, set(sizes))
    weights = sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
    moved = 0
    for node in graph.node:
        names = [name for name in (*node.input, *node.output) if name in buffers]
        if node.op_type in QDQ and len({buffers[name] for name in names}) == 1:
            continue  # a fused quantize/dequantize step: the int8 runtime moves nothing here
        moved += sum(sizes[buffers[name]] for name in names)
    return weights + moved


def count_macs(proto: onnx.ModelProto) -> int:
    """Multiply-accumulates of the MAC ops (see `measure`) at the inferred batch-1 shapes."""
    graph = proto.graph
    values = (*graph.value_info, *graph.input, *graph.output)
    shapes = {v.name: _dims(v.type.tensor_type) for v in values}
    shapes |= {t.name: list(t.dims) for t in graph.initializer}
    macs = 0
    for node in graph.node:
        if node.op_type not in MAC_WEIGHT:
            continue
        out = shapes.get(node.output[0])
        weight = shapes.get(node.input[MAC_WEIGHT[node.op_type]])
        if out is None or weight is None:
            raise ValueError(f"{node.op_type} node {node.name!r} has no inferred shapes")
        if node.op_type in CONV_OPS:
            inner = math.prod(weight[1:])  # input channels per group x kernel
        elif node.op_type in ("Gemm", "QGemm") and _attr(node, "transB"):
            inner = weight[1]
        else:
            inner = weight[-2]
        macs += math.prod(out) * inner
    return macs


def count_params(proto: onnx.ModelProto) -> int:
    """Elements of the MAC ops' constant weights and biases (DequantizeLinear followed back)."""
    graph = proto.graph
    initializers = {t.name: math.prod(t.dims) for t in graph.initializer}
    dequantized = {
        node.output[0]: node.input[0]
        for node in graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers
    }
    counted: set[str] = set()
    for node in graph.node:
        slots = [MAC_WEIGHT.get(node.op_type), BIAS_INPUT.get(node.op_type)]
        if node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            slots.append(0)  # either side of a MatMul may be the weight
        for slot in slots:
            if slot is not None and slot < len(node.input):
                name = dequantized.get(node.input[slot], node.input[slot])
                if name in initializers:
                    counted.add(name)
    return sum(initializers[name] for name in counted)


def _dims(kind: onnx.TypeProto.Tensor) -> list[int] | None:
    """Known dimensions, or None when any is unknown."""
    if not kind.HasField("shape"):
        return None
    dims = kind.shape.dim
    return [d.dim_value for d in dims] if all(d.HasField("dim_value") for d in dims) else None


def _attr(node: onnx.NodeProto, name: str) -> bool:
    """Whether an integer flag attribute (a Gemm's transA, transB) is set."""
    return any(a.name == name and a.i for a in node.attribute)
