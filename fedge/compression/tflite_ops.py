"""ONNX node -> TensorFlow ops for the tflite target, with every tensor's layout tracked.

fedge's graphs are channels-first (N, C, ...); TensorFlow's convolutions and pools are
channels-last, so each 3-D/4-D activation is held channels-last and moved back only where ONNX
semantics need the channels-first order (Flatten, Reshape, Softmax, the output).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fedge.compression.targets import TargetError


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class Value:
    """A TensorFlow tensor and whether it is held channels-last (ONNX's N,C,... moved to N,...,C)."""

    tensor: Any
    channels_last: bool


class Ops:
    """ONNX node -> TensorFlow ops, with the layout of every tensor tracked."""

    def __init__(self, tf: Any, consts: dict[str, np.ndarray]) -> None:
        self.tf = tf
        self.consts = consts

    def from_onnx_layout(self, x: Any) -> Value:
        """The model input, channels-last when it has channels and positions."""
        rank = len(x.shape)
        if rank < 3:
            return Value(x, False)
        return Value(self.tf.transpose(x, [0, *range(2, rank), 1]), True)

    def to_onnx_layout(self, value: Value) -> Any:
        """The tensor in ONNX's channels-first order."""
        if not value.channels_last:
            return value.tensor
        rank = len(value.tensor.shape)
        return self.tf.transpose(value.tensor, [0, rank - 1, *range(1, rank - 1)])

    def fold(self, node: onnx.NodeProto) -> None:
        """Constant-only nodes (DequantizeLinear of int8 weights, Constant) become arrays."""
        ins = [self.consts[n] for n in node.input if n]
        if node.op_type == "DequantizeLinear":
            self.consts[node.output[0]] = _dequantize(ins, attrs(node).get("axis", 1))
        elif node.op_type == "Constant":
            self.consts[node.output[0]] = numpy_helper.to_array(attrs(node)["value"])
        elif node.op_type == "Identity":
            self.consts[node.output[0]] = ins[0]
        else:
            raise TargetError(f"unsupported constant node {node.op_type} ({node.name})")

    def const(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        """Input `index` of `node`, which must be a constant."""
        name = node.input[index] if index < len(node.input) else ""
        if name not in self.consts:
            raise TargetError(f"{node.op_type} {node.name}: input {index} must be a constant")
        return self.consts[name]

    def apply(self, node: onnx.NodeProto, args: list[Value | None]) -> Value:
        """The TensorFlow ops of one ONNX node; TargetError naming an op it cannot map."""
        handler = getattr(self, f"_{node.op_type.lower()}", None)
        if handler is None:
            raise TargetError(
                f"unsupported ONNX op {node.op_type} ({node.name}); the tflite target maps "
                f"{', '.join(SUPPORTED)}"
            )
        x = args[0]
        if x is None:
            raise TargetError(f"{node.op_type} {node.name}: its first input is a constant")
        result: Value = handler(node, x)
        return result

    # Element-wise.
    def _relu(self, node: onnx.NodeProto, x: Value) -> Value:
        return Value(self.tf.nn.relu(x.tensor), x.channels_last)

    def _hardswish(self, node: onnx.NodeProto, x: Value) -> Value:
        t = x.tensor
        return Value(t * self.tf.nn.relu6(t + 3.0) / 6.0, x.channels_last)

    def _sigmoid(self, node: onnx.NodeProto, x: Value) -> Value:
        return Value(self.tf.math.sigmoid(x.tensor), x.channels_last)

    def _clip(self, node: onnx.NodeProto, x: Value) -> Value:
        low = float(self.const(node, 1)) if len(node.input) > 1 and node.input[1] else None
        high = float(self.const(node, 2)) if len(node.input) > 2 and node.input[2] else None
        return Value(self._clamp(x.tensor, low, high), x.channels_last)

    def _clamp(self, t: Any, low: float | None, high: float | None) -> Any:
        if low == 0.0 and high == 6.0:
            return self.tf.nn.relu6(t)
        if low is not None:
            t = self.tf.nn.relu(t) if low == 0.0 else self.tf.maximum(t, low)
        return t if high is None else self.tf.minimum(t, high)

    def _quantizelinear(self, node: onnx.NodeProto, x: Value) -> Value:
        """An activation's Q (its DQ follows): TensorFlow's fake quantization on the same grid.

        The converter takes a fake-quantized tensor's range as given (as for a QAT model)
        instead of calibrating it, so the int8 tensor gets the ONNX model's own scale and zero
        point: TFLM and onnxruntime then round the same integer model.
        """
        scales = self.const(node, 1)
        if np.size(scales) != 1:
            raise TargetError(f"QuantizeLinear {node.name}: per-channel activations")
        scale = float(np.ravel(scales)[0])
        zero = self.const(node, 2) if len(node.input) > 2 else np.uint8(0)
        info = np.iinfo(zero.dtype)
        low, high = (info.min - int(zero)) * scale, (info.max - int(zero)) * scale
        if info.max - info.min != 255 or not low <= 0.0 <= high:
            raise TargetError(f"QuantizeLinear {node.name}: not an 8-bit range holding 0")
        fake = self.tf.quantization.fake_quant_with_min_max_vars
        return Value(fake(x.tensor, min=low, max=high, num_bits=8), x.channels_last)

    def _dequantizelinear(self, node: onnx.NodeProto, x: Value) -> Value:
        return x  # the grid was applied by its QuantizeLinear

    def _binary(self, x: Value, const: np.ndarray, op: Callable[[Any, Any], Any]) -> Value:
        rank = len(x.tensor.shape)
        c = np.asarray(const, dtype=np.float32)
        if x.channels_last and c.ndim > 1:
            c = c.reshape((1,) * (rank - c.ndim) + c.shape)
            c = c.transpose([0, *range(2, rank), 1])
        return Value(op(x.tensor, self.tf.constant(c)), x.channels_last)

    def _mul(self, node: onnx.NodeProto, x: Value) -> Value:
        return self._binary(x, self.const(node, 1), lambda a, b: a * b)

    def _add(self, node: onnx.NodeProto, x: Value) -> Value:
        return self._binary(x, self.const(node, 1), lambda a, b: a + b)

    def _sub(self, node: onnx.NodeProto, x: Value) -> Value:
        return self._binary(x, self.const(node, 1), lambda a, b: a - b)

    def _div(self, node: onnx.NodeProto, x: Value) -> Value:
        return self._binary(x, self.const(node, 1), lambda a, b: a / b)

    def affine(self, x: Value, scale: np.ndarray, offset: np.ndarray) -> Value:
        """The folded preprocessing, x * scale + offset per channel, as one 1x1 depthwise conv.

        One op rounds once: as Mul then Add, the converter puts the product on a grid of its
        own, and rounding twice moved the first layer's int8 input off onnxruntime's.
        """
        tf, t = self.tf, x.tensor
        shape = t.shape
        if x.channels_last:
            channels = int(shape[-1])
            a, b = per_channel(scale, channels), per_channel(offset, channels)
            t4 = t if len(shape) == 4 else tf.expand_dims(t, 1)
        else:  # flat features: one channel per feature
            channels = int(np.prod(shape[1:]))
            a, b = per_channel(scale, channels), per_channel(offset, channels)
            t4 = tf.reshape(t, [-1, 1, 1, channels])
        kernel = tf.constant(a.reshape(1, 1, channels, 1))
        out = tf.nn.depthwise_conv2d(t4, kernel, strides=[1, 1, 1, 1], padding="VALID")
        out = tf.nn.bias_add(out, tf.constant(b))
        return Value(tf.reshape(out, [-1, *shape[1:]]), x.channels_last)

    # Layers.
    def _conv(self, node: onnx.NodeProto, x: Value) -> Value:
        tf, a = self.tf, attrs(node)
        w = self.const(node, 1).astype(np.float32)
        bias = self.const(node, 2).astype(np.float32) if len(node.input) > 2 else None
        spatial = w.ndim - 2
        t = x.tensor if spatial == 2 else tf.expand_dims(x.tensor, 1)  # 1-D as 2-D with H = 1
        w2 = w if spatial == 2 else w[:, :, None, :]
        pads = list(a.get("pads", [0] * 2 * spatial))
        strides = list(a.get("strides", [1] * spatial))
        dilations = list(a.get("dilations", [1] * spatial))
        if spatial == 1:
            pads, strides, dilations = [0, pads[0], 0, pads[1]], [1, *strides], [1, *dilations]
        padding = _padding(pads, w2.shape[2:], strides, dilations, t.shape[1:3])
        groups, channels = int(a.get("group", 1)), int(t.shape[-1])
        if groups == 1:
            y = tf.nn.conv2d(
                t, w2.transpose(2, 3, 1, 0), [1, *strides, 1], padding, dilations=dilations
            )
        elif groups == channels and w2.shape[1] == 1:
            multiplier = w2.shape[0] // channels
            kernel = w2.reshape(channels, multiplier, *w2.shape[2:]).transpose(2, 3, 0, 1)
            y = tf.nn.depthwise_conv2d(t, kernel, [1, *strides, 1], padding, dilations=dilations)
        else:
            raise TargetError(f"Conv {node.name}: group {groups} is neither 1 nor depthwise")
        if bias is not None:
            y = tf.nn.bias_add(y, bias)
        return Value(y if spatial == 2 else tf.squeeze(y, 1), True)

    def _pool(self, node: onnx.NodeProto, x: Value, average: bool) -> Value:
        tf, a = self.tf, attrs(node)
        kernel = list(a["kernel_shape"])
        spatial = len(kernel)
        t = x.tensor if spatial == 2 else tf.expand_dims(x.tensor, 1)
        strides = list(a.get("strides", [1] * spatial))
        pads = list(a.get("pads", [0] * 2 * spatial))
        if spatial == 1:
            kernel, strides, pads = [1, *kernel], [1, *strides], [0, pads[0], 0, pads[1]]
        if int(a.get("ceil_mode", 0)):
            pads = _ceil_pads(pads, kernel, strides, t.shape[1:3])
        if average and int(a.get("count_include_pad", 0)) and any(pads):
            raise TargetError(f"AveragePool {node.name}: count_include_pad with padding")
        padding = _padding(pads, kernel, strides, [1, 1], t.shape[1:3])
        if not isinstance(padding, str):
            raise TargetError(
                f"{node.op_type} {node.name}: padding {pads} is neither VALID nor SAME"
            )
        pool = tf.nn.avg_pool2d if average else tf.nn.max_pool2d
        y = pool(t, kernel, [1, *strides, 1], padding)
        return Value(y if spatial == 2 else tf.squeeze(y, 1), True)

    def _maxpool(self, node: onnx.NodeProto, x: Value) -> Value:
        return self._pool(node, x, average=False)

    def _averagepool(self, node: onnx.NodeProto, x: Value) -> Value:
        return self._pool(node, x, average=True)

    def _globalaveragepool(self, node: onnx.NodeProto, x: Value) -> Value:
        rank = len(x.tensor.shape)
        axes = list(range(1, rank - 1)) if x.channels_last else list(range(2, rank))
        return Value(self.tf.reduce_mean(x.tensor, axis=axes, keepdims=True), x.channels_last)

    def _flatten(self, node: onnx.NodeProto, x: Value) -> Value:
        if int(attrs(node).get("axis", 1)) != 1:
            raise TargetError(f"Flatten {node.name}: only axis 1 is supported")
        t = self.to_onnx_layout(x)  # ONNX flattens channels first
        return Value(self.tf.reshape(t, [1, -1]), False)

    def _reshape(self, node: onnx.NodeProto, x: Value) -> Value:
        shape = [int(s) for s in self.const(node, 1)]
        return Value(self.tf.reshape(self.to_onnx_layout(x), [1, *shape[1:]]), False)

    def _gemm(self, node: onnx.NodeProto, x: Value) -> Value:
        a = attrs(node)
        if int(a.get("transA", 0)) or x.channels_last:
            raise TargetError(f"Gemm {node.name}: transA or a 4-D input is not supported")
        w = self.const(node, 1).astype(np.float32) * float(a.get("alpha", 1.0))
        w = w.T if int(a.get("transB", 0)) else w
        y = self.tf.matmul(x.tensor, self.tf.constant(w))
        if len(node.input) > 2 and node.input[2]:
            y = y + self.const(node, 2).astype(np.float32) * float(a.get("beta", 1.0))
        return Value(y, False)

    def _matmul(self, node: onnx.NodeProto, x: Value) -> Value:
        if x.channels_last:
            raise TargetError(f"MatMul {node.name}: a 4-D input is not supported")
        w = self.const(node, 1).astype(np.float32)
        return Value(self.tf.matmul(x.tensor, self.tf.constant(w)), False)

    def _softmax(self, node: onnx.NodeProto, x: Value) -> Value:
        return Value(self.tf.nn.softmax(self.to_onnx_layout(x)), False)

    def _identity(self, node: onnx.NodeProto, x: Value) -> Value:
        return x


# The ONNX ops `Ops` maps (each has a `_<lowercase name>` method), for the refusal message.
SUPPORTED = (
    "Add", "AveragePool", "Clip", "Conv", "DequantizeLinear", "Div", "Flatten",
    "GlobalAveragePool", "Gemm", "HardSwish", "Identity", "MatMul", "MaxPool", "Mul",
    "QuantizeLinear", "Relu", "Reshape", "Sigmoid", "Softmax", "Sub",
)  # fmt: skip


def per_channel(const: np.ndarray, channels: int) -> np.ndarray:
    """A broadcastable ONNX constant (scalar, per channel or per feature) as `channels` values."""
    c = np.asarray(const, dtype=np.float32)
    if c.size not in (1, channels):
        raise TargetError(
            f"a preprocessing constant of {c.size} values for {channels} channels; allowed: one "
            "value or one per channel (a model trained with center-inputs public has one per "
            "input value: ship it in ONNX)"
        )
    return np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float32).copy()


def _dequantize(ins: list[np.ndarray], axis: int) -> np.ndarray:
    """DequantizeLinear on constants: (q - zero) * scale, per tensor or along `axis`."""
    q = ins[0].astype(np.float32)
    scale = ins[1].astype(np.float32)
    zero = ins[2].astype(np.float32) if len(ins) > 2 else np.zeros_like(scale)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def _ceil_pads(pads: list[int], kernel: list[int], strides: list[int], size: Any) -> list[int]:
    """ceil_mode: pad each axis's end so a floor-mode pool gives the ceil-mode output size."""
    out = list(pads)
    spatial = len(kernel)
    for i in range(spatial):
        length = int(size[i]) + pads[i] + pads[i + spatial]
        want = math.ceil((length - kernel[i]) / strides[i]) + 1
        if (want - 1) * strides[i] >= int(size[i]) + pads[
            i
        ]:  # ONNX drops a window starting in padding
            want -= 1
        out[i + spatial] += max(0, (want - 1) * strides[i] + kernel[i] - length)
    return out


def _padding(
    pads: list[int], kernel: Any, strides: list[int], dilations: list[int], size: Any
) -> str | list[list[int]]:
    """TensorFlow's padding for ONNX pads: VALID, SAME when it is the same, else explicit."""
    spatial = len(strides)
    if not any(pads):
        return "VALID"
    same = True
    for i in range(spatial):
        k = (int(kernel[i]) - 1) * dilations[i] + 1
        n = int(size[i])
        total = max((math.ceil(n / strides[i]) - 1) * strides[i] + k - n, 0)
        if (pads[i], pads[i + spatial]) != (total // 2, total - total // 2):
            same = False
    if same:
        return "SAME"
    return [[0, 0], *[[pads[i], pads[i + spatial]] for i in range(spatial)], [0, 0]]
