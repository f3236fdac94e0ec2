"""Device artifacts per runtime: the shipped ONNX model as an ORT-format file for ORT Mobile."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
from onnxruntime.tools.mobile_helpers.usability_checker import check_nnapi_partitions
from onnxruntime.tools.onnx_model_utils import (
    ModelProtoWithShapeInfo,
    fix_output_shapes,
    make_input_shape_fixed,
    optimize_model,
)

from fedge.core.ort import FOLD_QDQ, weight_only

# Phones are ARM: int8 QDQ fusions allowed, no x86-only NCHWc layout (the converter's "arm").
ORT_SAVE_OPTIONS = {
    "session.save_model_format": "ORT",
    # Runtime style: basic optimizations baked in, the rest saved for replay on the nodes the
    # CPU EP keeps, so NNAPI/CoreML still see plain ONNX ops rather than CPU-only fused kernels.
    "optimization.minimal_build_optimizations": "save",
    "session.qdqisint8allowed": "1",
}
MIN_AGREEMENT = 0.99  # least share of labels an artifact must share with model.onnx to ship
DISABLED_OPTIMIZERS = ["NchwcTransformer"]  # x86-specific layouts; would not run on a phone


class TargetError(ValueError):
    """A model cannot be made into a device artifact; the message says why in one line."""


@dataclass(frozen=True)
class NnapiVerdict:
    """onnxruntime's mobile usability checker on NNAPI, "as is" (shapes not assumed fixed)."""

    suitability: str  # YES, MAYBE or NO: "Model should perform well with NNAPI as is: ..."
    partitions: int  # NNAPI partitions the graph would be split into
    supported_nodes: int  # nodes NNAPI would take (the rest run on the CPU EP)
    nodes: int  # nodes after onnxruntime's basic optimizations, as the checker counts them

    @property
    def as_is(self) -> bool:
        """True when the checker says the model should perform well with NNAPI as is."""
        return self.suitability == "YES"


@dataclass(frozen=True)
class OrtArtifact:
    """An ORT-format model for ORT Mobile, with the checker's verdict on what it came from."""

    ort_bytes: bytes  # the .ort file (runtime-optimization style, ARM target)
    fixed_onnx: bytes  # the batch-1 ONNX model the .ort was converted from
    input_name: str
    input_shape: tuple[int, ...]  # the fixed input shape, batch 1 first
    nnapi: NnapiVerdict  # the checker on `fixed_onnx`

    @property
    def nnapi_as_is(self) -> bool:
        """True when onnxruntime's checker rates the fixed model usable on NNAPI as is."""
        return self.nnapi.as_is


def ort_artifact(model_bytes: bytes) -> OrtArtifact:
    """Make the ORT Mobile artifact of an ONNX model: batch fixed to 1, ORT format, checked.

    Parameters
    ----------
    model_bytes
        A self-contained ONNX model with one input whose only dynamic axis is the first
        (fedge exports name it ``batch``).

    Returns
    -------
    OrtArtifact
        The .ort bytes, the batch-1 ONNX they came from and onnxruntime's NNAPI verdict on it.

    Raises
    ------
    TargetError
        The bytes are not such a model, or onnxruntime cannot check or convert it.

    """
    fixed, name, shape = fix_batch(model_bytes)
    return OrtArtifact(
        ort_bytes=to_ort(fixed),
        fixed_onnx=fixed,
        input_name=name,
        input_shape=shape,
        nnapi=nnapi_verdict(fixed),
    )


def fix_batch(model_bytes: bytes) -> tuple[bytes, str, tuple[int, ...]]:
    """The model with its input's first axis fixed to 1 everywhere it appears.

    Returns the model bytes, the input name and the fixed input shape. NNAPI needs every
    shape fixed; a named batch axis (dim_param) is replaced throughout the graph, so the
    outputs become fixed as well.
    """
    proto = _parse(model_bytes)
    name, dims = _single_input(proto)
    if len(dims) < 2:
        raise TargetError(f"input {name!r} has rank {len(dims)}; expected a batch axis and more")
    if dims[0] is not None and dims[0] != 1:
        raise TargetError(f"input {name!r} has a fixed batch of {dims[0]}; expected 1 or a name")
    rest = dims[1:]
    if any(d is None or d < 1 for d in rest):
        raise TargetError(f"input {name!r} has shape {dims}: only the batch axis may be dynamic")
    shape = (1, *(int(d) for d in rest if d is not None))
    try:
        make_input_shape_fixed(proto.graph, name, list(shape))
        fix_output_shapes(proto)
    except (ValueError, onnx.checker.ValidationError) as err:
        raise TargetError(f"cannot fix the batch of {name!r} to 1: {_first_line(err)}") from None
    return proto.SerializeToString(), name, shape


def to_ort(model_bytes: bytes) -> bytes:
    """The ORT-format bytes of an ONNX model, converted as onnxruntime's converter does.

    Same session settings as ``convert_onnx_models_to_ort --optimization_style Runtime
    --target_platform arm``; that module is not imported because importing it configures the
    root logger (tests check the two agree).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the exception carries the reason
    for key, value in ORT_SAVE_OPTIONS.items():
        options.add_session_config_entry(key, value)
    if weight_only(model_bytes):  # saved folded: fp32 weights (larger), no dequantize per call
        options.add_session_config_entry(FOLD_QDQ, "1")
    with tempfile.TemporaryDirectory(prefix="fedge-ort-") as tmp:
        out = Path(tmp) / "model.ort"
        options.optimized_model_filepath = str(out)
        try:
            ort.InferenceSession(
                model_bytes,
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=DISABLED_OPTIMIZERS,
            )
        except Exception as err:  # onnxruntime raises its own exception types
            raise TargetError(f"onnxruntime cannot convert the model: {_first_line(err)}") from None
        return out.read_bytes()


def nnapi_verdict(model_bytes: bytes) -> NnapiVerdict:
    """What ``check_onnx_model_mobile_usability`` reports for NNAPI "as is".

    The checker's own steps: optimize at onnxruntime's basic level, infer shapes, then
    partition with fixed input sizes required (a node with a dynamic input stays on the CPU).
    """
    with tempfile.TemporaryDirectory(prefix="fedge-nnapi-") as tmp:
        source, basic = Path(tmp) / "model.onnx", Path(tmp) / "basic.onnx"
        source.write_bytes(model_bytes)
        try:
            optimize_model(source, basic)
            shaped = ModelProtoWithShapeInfo(basic).model_with_shape_info
            info = check_nnapi_partitions(shaped, require_fixed_input_sizes=True)
        except Exception as err:  # onnxruntime's and onnx's own exception types
            raise TargetError(
                f"onnxruntime's checker cannot analyse it: {_first_line(err)}"
            ) from None
    return NnapiVerdict(
        suitability=info.suitability().name,
        partitions=info.num_partitions,
        supported_nodes=info.num_supported_nodes,
        nodes=info.num_nodes,
    )


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    """The ONNX protobuf, or TargetError."""
    try:
        proto = onnx.load_from_string(model_bytes)
    except Exception as err:  # protobuf's DecodeError and friends
        raise TargetError(f"not an ONNX model: {_first_line(err)}") from None
    if not proto.graph.node:
        raise TargetError("the ONNX model has no graph")
    return proto


def _single_input(proto: onnx.ModelProto) -> tuple[str, list[int | None]]:
    """The one real input (initializers listed as inputs do not count): name and dims."""
    weights = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise TargetError(f"the model has {len(inputs)} inputs; expected one")
    (value,) = inputs
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        raise TargetError(f"input {value.name!r} is not a tensor with a shape")
    dims = value.type.tensor_type.shape.dim
    return value.name, [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (onnxruntime's run to many)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
