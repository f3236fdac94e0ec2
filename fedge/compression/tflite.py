"""The `tflite` device artifact: a fedge student's ONNX graph as a full-integer int8 LiteRT model.

Each ONNX node becomes the TensorFlow op that computes the same thing (channels-last inside,
the ONNX input contract outside), and TensorFlow's own TFLiteConverter quantizes the result with
a representative set of raw inputs. The op set is what fedge's students export: Conv (1-D/2-D,
grouped as depthwise), pooling, Gemm/MatMul, ReLU/Clip/HardSwish, Flatten/Reshape, Softmax and the
folded preprocessing; int8 weights behind DequantizeLinear are read as the floats they stand for,
and an activation's QuantizeLinear/DequantizeLinear pair as TensorFlow's fake quantization on the
same grid, which the converter keeps: a static int8 model becomes the same integer model.
Anything else is refused by name (`TargetError`). TensorFlow comes with the `litert` extra.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fedge.compression.targets import TargetError
from fedge.compression.tflite_ops import Ops, Value
from fedge.core.litert import (
    Arena,
    LiteRtError,
    capture_stderr,
    first_line,
    litert_logits,
    tflm_arena,
)
from fedge.core.tflite_plan import planned_arena

EXTRA_HINT = "the tflite target needs TensorFlow: pip install -e '.[litert]'"
LOGIT_MARGIN = 8.0  # int8 logits saturate this far below the lowest top logit calibration saw
LOGITS = "logits"


@dataclass(frozen=True)
class TfliteArtifact:
    """A LiteRT flatbuffer and the contract a device needs to feed it."""

    tflite_bytes: bytes
    input_shape: tuple[int, ...]  # batch 1 first, the ONNX model's layout (raw samples)
    int8: bool  # full-integer: int8 input and output, no float tensor


def _calibration(calibration: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """Calibration samples as float32, or TargetError naming what is wrong with them."""
    if np.asarray(calibration).dtype.kind not in "iuf":
        raise TargetError(
            f"calibration samples must be real numbers, got dtype {np.asarray(calibration).dtype}"
        )
    samples = np.asarray(calibration, dtype=np.float32)
    if samples.ndim != len(input_shape) or samples.shape[1:] != input_shape[1:]:
        raise TargetError(
            f"calibration samples have shape {samples.shape[1:]}; the model takes {input_shape[1:]}"
        )
    if not len(samples):
        raise TargetError("calibration holds no samples; allowed: at least 1 (a few hundred)")
    if not np.isfinite(samples).all():
        raise TargetError(
            "calibration samples hold NaN or Inf (as float32); allowed: finite values"
        )
    return samples


def to_tflite(model_bytes: bytes, calibration: np.ndarray | None) -> TfliteArtifact:
    """Convert a fedge device ONNX model (raw input in, `logits` out) to a LiteRT model.

    `calibration` (raw samples, the model's input shape) makes it full-integer int8, as
    microcontrollers run it; None keeps it float32 (used to check the graph mapping exactly).
    The LiteRT model has one input (batch 1) and one output, the logits.
    """
    tf = _tensorflow()
    graph = _Graph(_parse(model_bytes))
    spec = tf.TensorSpec([1, *graph.input_shape[1:]], tf.float32)
    func = tf.function(graph.build(tf), input_signature=[spec], autograph=False)
    try:
        concrete = func.get_concrete_function()
    except TargetError:
        raise
    except Exception as err:  # noqa: BLE001 - TensorFlow refusing a shape or a value
        raise TargetError(f"TensorFlow cannot build the graph: {first_line(err)}") from None
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], func)
    if calibration is not None:
        samples = _calibration(calibration, graph.input_shape)

        def representative() -> Any:
            for sample in samples:
                yield [sample[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    blobs: list[bytes] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Statistics for quantized inputs ..." and kin
            capture_stderr(lambda: blobs.append(converter.convert()))  # its C++ log lines
    except Exception as err:  # noqa: BLE001 - the converter raises many types; one line out
        raise TargetError(f"TFLiteConverter failed: {first_line(err)}") from None
    blob = bytes(blobs[0])
    if calibration is not None and not graph.logits_on_grid:
        top = min(float(np.max(concrete(tf.constant(s[None])))) for s in samples)
        blob = narrow_logits(blob, top - LOGIT_MARGIN)
    return TfliteArtifact(blob, (1, *graph.input_shape[1:]), calibration is not None)


def narrow_logits(model: bytes, floor: float) -> bytes:
    """The int8 model with its logits' range starting at `floor` (when that narrows it).

    The converter spreads the logits' 256 int8 steps over everything calibration saw, most of
    it far below any top class (fmnist: -41 to +24, steps of 0.26), so close classes tie and
    argmax takes the first. Logits below `floor` (LOGIT_MARGIN below the lowest top logit
    calibration saw) then saturate instead: their softmax weight is under e^-8 of the top
    class's, and the steps halve. Only the output tensor's scale and zero point change; both
    runtimes derive the last layer's requantization from them when they load the model.
    """
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415 - optional
    except ImportError:
        raise TargetError(EXTRA_HINT) from None

    buffer = bytearray(model)
    root = schema.Model.GetRootAs(buffer, 0)
    graph = root.Subgraphs(0)
    output = int(graph.OutputsAsNumpy()[0])
    writers = [
        graph.Operators(i)
        for i in range(graph.OperatorsLength())
        if output in graph.Operators(i).OutputsAsNumpy()
    ]
    codes = {root.OperatorCodes(op.OpcodeIndex()).BuiltinCode() for op in writers}
    # Only a layer that requantizes its result (FULLY_CONNECTED 9, CONV_2D 3) takes a new
    # output scale; ops that copy int8 values (MINIMUM/MAXIMUM of a Clip) would not.
    quantization = graph.Tensors(output).Quantization()
    if codes - {3, 9} or not codes or quantization is None or quantization.ScaleLength() != 1:
        return model
    scales, zeros = quantization.ScaleAsNumpy(), quantization.ZeroPointAsNumpy()  # views
    scale, zero = float(scales[0]), int(zeros[0])
    low, high = (-128 - zero) * scale, (127 - zero) * scale
    if not low + scale < floor < 0.0 < high:  # narrows by less than a step, or drops 0
        return model
    scales[0] = (high - floor) / 255.0
    zeros[0] = round(-128 - floor / float(scales[0]))
    return bytes(buffer)


def _tensorflow() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's C++ start-up chatter
    modules: list[Any] = []

    def load() -> None:
        import tensorflow as tf  # noqa: PLC0415 - heavy, optional: only for this target

        modules.append(tf)

    try:
        capture_stderr(load)  # its absl/oneDNN notices go to the C stderr
    except ImportError:
        raise TargetError(EXTRA_HINT) from None
    return modules[0]


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(model_bytes)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise TargetError(f"not an ONNX model: {err}") from None


class _Graph:
    """The ONNX graph read once: constants folded, nodes in order, the input's shape."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        graph = proto.graph
        self.consts: dict[str, np.ndarray] = {
            init.name: numpy_helper.to_array(init) for init in graph.initializer
        }
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise TargetError(f"the model has {len(inputs)} inputs; the tflite target takes one")
        self.input_name = inputs[0].name
        dims = inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
        if len(shape) not in (2, 3, 4) or min(shape[1:]) < 1:
            raise TargetError(f"input shape {shape} is not (N, D), (N, C, L) or (N, C, H, W)")
        self.input_shape = tuple(shape)
        outputs = [o.name for o in graph.output]
        if LOGITS not in outputs:
            raise TargetError(f"the model has no {LOGITS!r} output (outputs: {outputs})")
        self.nodes = list(graph.node)
        # A static (QDQ) model's logits come out of a DequantizeLinear: their int8 grid is the
        # model's own (fake-quantized here), so the converter keeps it and nothing narrows it.
        self.logits_on_grid = any(
            LOGITS in n.output and n.op_type == "DequantizeLinear" for n in self.nodes
        )
        self.affine = self._affine_pairs()  # Mul output -> its Add: one op (Ops.affine)

    def build(self, tf: Any) -> Callable[[Any], Any]:
        """A function from a raw NCHW-style batch to logits, made of TensorFlow ops."""
        ops = Ops(tf, self.consts)

        def forward(x: Any) -> Any:
            values: dict[str, Value] = {self.input_name: ops.from_onnx_layout(x)}
            affine = self.affine
            paired = {add.output[0] for add in affine.values()}
            for node in self.nodes:
                if node.op_type in ("ArgMax",) or node.output[0] in paired:
                    continue  # the label (the device takes argmax), an Add done with its Mul
                if node.output[0] in affine:  # Mul then Add of constants: one op
                    add = affine[node.output[0]]
                    a, b = self.consts[node.input[1]], self.consts[add.input[1]]
                    values[add.output[0]] = ops.affine(values[node.input[0]], a, b)
                    continue
                if all(name in self.consts for name in node.input if name):
                    ops.fold(node)
                    continue
                args = [values.get(n) for n in node.input]
                values[node.output[0]] = ops.apply(node, args)
                if node.output[0] == LOGITS:
                    break
            if LOGITS not in values:
                raise TargetError(f"no node computes {LOGITS!r}")
            return ops.to_onnx_layout(values[LOGITS])

        return forward

    def _affine_pairs(self) -> dict[str, onnx.NodeProto]:
        """Mul-by-constant outputs whose only reader adds a constant: Mul output -> that Add."""
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.nodes:
            for name in node.input:
                readers.setdefault(name, []).append(node)
        pairs = {}
        for node in self.nodes:
            if node.op_type != "Mul" or len(node.input) != 2:
                continue
            if node.input[0] in self.consts or node.input[1] not in self.consts:
                continue
            after = readers.get(node.output[0], [])
            if (
                len(after) == 1
                and after[0].op_type == "Add"
                and after[0].input[0] == node.output[0]
                and after[0].input[1] in self.consts
            ):
                pairs[node.output[0]] = after[0]
        return pairs


@dataclass(frozen=True)
class TfliteReport:
    """A tflite artifact measured against the ONNX model it came from, on given samples."""

    flash_bytes: int
    planned_arena_bytes: int  # fedge's planner on the tflite graph (activations only)
    tflm_arena: Arena | None  # TFLM's own report; None when tflite-micro is not installed
    agreement: float  # share of samples whose LiteRT label equals onnxruntime's
    samples: int
    labels: np.ndarray  # LiteRT's label of each sample

    def summary(self) -> str:
        """One line: flash, arenas, label agreement."""
        tflm = (
            f"TFLM arena {self.tflm_arena.total} bytes ({self.tflm_arena.head} activations + "
            f"{self.tflm_arena.tail} persistent)"
            if self.tflm_arena is not None
            else "TFLM arena not measured (tflite-micro not installed)"
        )
        return (
            f"{self.flash_bytes} bytes flash, planned activation arena "
            f"{self.planned_arena_bytes} bytes, {tflm}; labels agree with ONNX on "
            f"{self.agreement:.2%} of {self.samples} samples (LiteRT)"
        )


def tflite_report(
    artifact: TfliteArtifact, expected: np.ndarray, samples: np.ndarray
) -> TfliteReport:
    """Flash, planned and TFLM arenas, and LiteRT's agreement with `expected` (ONNX's labels)."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1, *artifact.input_shape[1:])
    try:
        got = litert_logits(artifact.tflite_bytes, x).argmax(axis=1)
        planned = planned_arena(artifact.tflite_bytes)
    except LiteRtError as err:
        raise TargetError(str(err)) from None
    arena = None
    if importlib.util.find_spec("tflite_micro") is not None:
        try:
            arena = tflm_arena(artifact.tflite_bytes)
        except LiteRtError as err:
            raise TargetError(str(err)) from None
    agreement = float((got == expected).mean()) if len(x) else 1.0
    return TfliteReport(len(artifact.tflite_bytes), planned, arena, agreement, len(x), got)
