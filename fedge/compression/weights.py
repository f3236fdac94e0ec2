"""Weight-only int8 (quant-mode weights): int8 weights dequantized at load, fp32 kernels at run time."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization.quant_utils import quantize_data

WEIGHT_OPS = ("Conv", "Gemm", "MatMul")  # ops whose second input is a weight
INT8 = onnx.TensorProto.INT8
FLOAT = onnx.TensorProto.FLOAT
MIN_OPSET = 13  # DequantizeLinear's `axis` (per-channel scales)


def _channel_axis(node: onnx.NodeProto, ndim: int) -> int:
    """The output channels' axis of a weight with `ndim` dimensions.

    Conv (out, in, k...) and Gemm with transB (out, in): 0; plain Gemm (in, out): 1; MatMul
    (..., in, out): the last.
    """
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i == 1 for a in node.attribute) else 1
    return ndim - 1


def _quantize(weight: np.ndarray, axis: int, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 values and their scales (one per output channel, or one in all).

    onnxruntime's own `quantize_data` does the arithmetic, so the rounding and the scale of an
    all-zero channel are what its static quantizer would give.
    """
    if not per_channel:
        _, scale, values = quantize_data(weight.ravel(), INT8, symmetric=True)
        return values.reshape(weight.shape).astype(np.int8), np.asarray(scale, np.float32)
    channels = np.moveaxis(weight, axis, 0)
    parts = [quantize_data(c.ravel(), INT8, symmetric=True) for c in channels]
    values = np.stack([p[2].reshape(channels.shape[1:]) for p in parts]).astype(np.int8)
    scales = np.array([p[1] for p in parts], dtype=np.float32).reshape(-1)
    return np.moveaxis(values, 0, axis), scales


def weight_only_int8(model_bytes: bytes, per_channel: bool = True) -> bytes:
    """The model with each Conv/Gemm/MatMul float weight stored as int8 behind DequantizeLinear.

    Activations stay float: `fedge.core.ort.cpu_options` folds the DequantizeLinear nodes into
    fp32 weights when a session loads, so the model has int8's size and fp32's kernels (at
    fmnist's student sizes onnxruntime's fp32 kernels ran about twice as fast as its int8 ones
    on x86). Biases and every other tensor stay float. Raises ValueError when no weight is
    quantizable.
    """
    proto = onnx.load_from_string(model_bytes)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ValueError(f"weight-only int8 needs opset >= {MIN_OPSET}, the model has {opset}")
    initializers = {t.name: t for t in graph.initializer}
    inputs = {i.name for i in graph.input}  # an initializer that is also an input is a default
    taken = _names(graph)
    dequantize: list[onnx.NodeProto] = []
    done: set[str] = set()
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = initializers.get(name)
        if name in done or name in inputs or tensor is None or tensor.data_type != FLOAT:
            continue
        weight = numpy_helper.to_array(tensor)
        if weight.ndim < 2:
            continue
        axis = _channel_axis(node, weight.ndim)
        values, scales = _quantize(weight, axis, per_channel)
        q_name, s_name, z_name, node_name = (
            _fresh(f"{name}_{part}", taken) for part in ("int8", "scale", "zero", "dequantize")
        )
        graph.initializer.remove(tensor)
        graph.initializer.extend(
            [
                numpy_helper.from_array(values, q_name),
                numpy_helper.from_array(scales, s_name),
                numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), z_name),
            ]
        )
        dq = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [name], name=node_name)
        if per_channel:
            dq.attribute.append(helper.make_attribute("axis", axis))
        dequantize.append(dq)
        done.add(name)
    if not dequantize:
        raise ValueError("no Conv, Gemm or MatMul weight to quantize")
    nodes = [*dequantize, *graph.node]  # the weights first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:  # the caller ships fp32 on ValueError
        raise ValueError(f"weight-only int8 made an invalid graph: {err}") from None
    return proto.SerializeToString()


def _names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor and node name the graph uses."""
    names = {t.name for t in graph.initializer} | {v.name for v in graph.input}
    names |= {v.name for v in graph.output} | {v.name for v in graph.value_info}
    for node in graph.node:
        names |= {node.name, *node.input, *node.output}
    return names


def _fresh(name: str, taken: set[str]) -> str:
    """`name`, or `name_2`, `name_3`, ...: the first the graph does not use yet (then taken)."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}_{n}"
    taken.add(candidate)
    return candidate
