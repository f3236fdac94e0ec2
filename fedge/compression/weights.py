"""Weight-only int8 (quant-mode weights): int8 weights dequantized at load, fp32 kernels at run time."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnxruntime.quantization.quant_utils import quantize_data

# The weight input of each op and the axis of its output channels (per-channel scales).
WEIGHT_OPS = ("Conv", "Gemm", "MatMul")
INT8 = onnx.TensorProto.INT8


def _channel_axis(node: onnx.NodeProto) -> int:
    """Conv (out, in, k...) and Gemm with transB (out, in): 0; MatMul and plain Gemm (in, out): 1."""
    if node.op_type == "Conv":
        return 0
    trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
    return 0 if node.op_type == "Gemm" and trans_b else 1


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
    initializers = {t.name: t for t in graph.initializer}
    dequantize: list[onnx.NodeProto] = []
    done: set[str] = set()
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = initializers.get(name)
        if name in done or tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        weight = numpy_helper.to_array(tensor)
        if weight.ndim < 2:
            continue
        axis = _channel_axis(node)
        values, scales = _quantize(weight, axis, per_channel)
        graph.initializer.remove(tensor)
        graph.initializer.extend(
            [
                numpy_helper.from_array(values, f"{name}_int8"),
                numpy_helper.from_array(scales, f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(scales, dtype=np.int8), f"{name}_zero"),
            ]
        )
        dq = helper.make_node(
            "DequantizeLinear",
            [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
            [name],
            name=f"{name}_dequantize",
        )
        if per_channel:
            dq.attribute.append(helper.make_attribute("axis", axis))
        dequantize.append(dq)
        done.add(name)
    if not dequantize:
        raise ValueError("no Conv, Gemm or MatMul weight to quantize")
    nodes = [*dequantize, *graph.node]  # the weights first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
