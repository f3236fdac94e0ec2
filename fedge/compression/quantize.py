"""Quantize stage: onnxruntime int8 (static or dynamic), guarded by validation accuracy and size."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from fedge.compression.distill import require_public_pool
from fedge.compression.minify import minified_size
from fedge.compression.weights import weight_only_int8
from fedge.core.choices import QUANT_MODES
from fedge.core.config import RunConfig
from fedge.core.ort import make_session, session_accuracy, session_logits
from fedge.core.partition import PublicPool, Split

FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
CALIBRATIONS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


@dataclass(frozen=True)
class QuantizeConfig:
    """How to quantize, and when to refuse int8 (built from the run's settings)."""

    mode: str  # static | weights (int8 weights only) | dynamic (MatMul weights) | none (quant-mode)
    format: str  # qdq | qoperator, static mode (quant-format)
    per_channel: bool  # per-output-channel weight scales, else one per tensor (quant-per-channel)
    calibration: str  # minmax | entropy | percentile, static mode (quant-calibration)
    calibration_samples: int  # public-pool samples used for calibration
    tolerance: float  # max validation accuracy int8 may lose against fp32 (int8-tolerance)

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown quant format {self.format!r}; allowed: {', '.join(FORMATS)}")
        if self.mode not in QUANT_MODES:
            raise ValueError(f"unknown quant mode {self.mode!r}; allowed: {', '.join(QUANT_MODES)}")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(
                f"unknown calibration {self.calibration!r}; allowed: {', '.join(CALIBRATIONS)}"
            )
        if self.tolerance > 1:
            raise ValueError(f"tolerance must be <= 1, got {self.tolerance}")
        if self.calibration_samples < 1:
            raise ValueError(f"calibration-samples must be >= 1, got {self.calibration_samples}")

    @classmethod
    def from_run(cls, cfg: RunConfig) -> QuantizeConfig:
        """int8 as the run sets it."""
        return cls(
            mode=cfg.quant_mode,
            format=cfg.quant_format,
            per_channel=cfg.quant_per_channel,
            calibration=cfg.quant_calibration,
            calibration_samples=cfg.quant_calibration_samples,
            tolerance=cfg.int8_tolerance,
        )


@dataclass(frozen=True)
class QuantizeResult:
    """The model to ship and why."""

    model_bytes: bytes  # int8 when accepted, else the fp32 input
    quantized: bool
    reason: str  # why int8 was shipped or refused
    fp32_val_accuracy: float
    int8_val_accuracy: float | None  # None: quantization failed
    int8_bytes: int | None


class _PoolReader(CalibrationDataReader):
    """Feeds public-pool samples one batch at a time to the calibrator."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int = 32) -> None:
        self._batches = iter(
            [{input_name: x[i : i + batch_size]} for i in range(0, len(x), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(model_bytes: bytes, public_pool: PublicPool, config: QuantizeConfig) -> bytes:
    """int8 as `config.mode` asks (static: calibrated on the public pool); the int8 ONNX bytes."""
    require_public_pool(public_pool)
    if config.mode == "weights":  # no activation ranges: the pool is not needed
        return weight_only_int8(model_bytes, config.per_channel)
    calib = np.ascontiguousarray(public_pool.x[: config.calibration_samples], dtype=np.float32)
    input_name = make_session(model_bytes).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="fedge-quant-") as tmp:
        fp32, prepped, int8 = (Path(tmp) / n for n in ("fp32.onnx", "prep.onnx", "int8.onnx"))
        fp32.write_bytes(model_bytes)
        quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
        if config.mode == "dynamic":
            # Dynamic int8 here means MatMul weights only: activations stay float and are
            # quantized on the fly; convolutions are left fp32.
            quantize_dynamic(
                str(prepped),
                str(int8),
                per_channel=config.per_channel,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=["MatMul"],
            )
            return int8.read_bytes()
        # Probabilities stay float: an int8 softmax would round them to steps of 1/256.
        softmax = [n.name for n in onnx.load(str(prepped)).graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(prepped),
            str(int8),
            _PoolReader(input_name, calib),
            quant_format=FORMATS[config.format],
            per_channel=config.per_channel,
            # QOperator kernels on x64 are fast with uint8 activations (onnxruntime warns that
            # int8 ones are slow: measured 3x slower at batch 64); QDQ keeps symmetric int8.
            activation_type=QuantType.QUInt8 if config.format == "qoperator" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATIONS[config.calibration],
            nodes_to_exclude=softmax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return int8.read_bytes()


def disagreement(fp32: bytes, int8: bytes, inputs: np.ndarray) -> float:
    """Share of `inputs` on which the two models' top classes differ.

    An upper bound on the accuracy int8 can lose on those inputs, measured without labels, so
    the unlabeled public pool counts too: several times the validation split's size, and far
    steadier than the difference of two accuracies on a few hundred samples.
    """
    first = session_logits(make_session(fp32), inputs).argmax(1)
    second = session_logits(make_session(int8), inputs).argmax(1)
    return float((first != second).mean())


def guard(
    fp32_bytes: int,
    int8_bytes: int,
    disagreed: float,
    checked: int,
    tolerance: float,
    accuracy: tuple[float, float],
) -> tuple[bool, str]:
    """Accept int8 only if it is smaller and disagrees with fp32 on at most `tolerance`.

    `disagreed` is measured on `checked` validation and public inputs; `accuracy` holds fp32's
    and int8's validation accuracy, for the reason's text.
    """
    where = f"{checked} validation and public inputs"
    if disagreed > tolerance:
        return (
            False,
            f"int8 refused: disagrees with fp32 on {disagreed * 100:.2f} % of {where} "
            f"(tolerance {tolerance * 100:.2f} %)",
        )
    if int8_bytes >= fp32_bytes:
        return False, f"int8 refused: not smaller ({int8_bytes} >= {fp32_bytes} bytes)"
    return (
        True,
        f"int8 accepted: {fp32_bytes} -> {int8_bytes} bytes, disagrees with fp32 on "
        f"{disagreed * 100:.2f} % of {where}; validation accuracy {accuracy[0]:.4f} -> "
        f"{accuracy[1]:.4f}",
    )


def check_inputs(public_pool: PublicPool, val: Split) -> np.ndarray:
    """What the int8 guard compares fp32 and int8 on: the validation split and the public pool."""
    return np.concatenate([val.x, public_pool.x])


def accuracy_guard(
    fp32_bytes: int, int8_bytes: int, accuracy: tuple[float, float], tolerance: float
) -> tuple[bool, str]:
    """Judge a retrained int8 model (QAT) by validation accuracy, not agreement.

    It may differ from fp32 and be as good: accepted if it is smaller and loses at most
    `tolerance` validation accuracy.
    """
    drop = accuracy[0] - accuracy[1]
    if drop > tolerance:
        return (
            False,
            f"int8 refused: lost {drop * 100:.2f} points on validation (tolerance "
            f"{tolerance * 100:.2f})",
        )
    if int8_bytes >= fp32_bytes:
        return False, f"int8 refused: not smaller ({int8_bytes} >= {fp32_bytes} bytes)"
    return (
        True,
        f"int8 accepted: {fp32_bytes} -> {int8_bytes} bytes, validation accuracy "
        f"{accuracy[0]:.4f} -> {accuracy[1]:.4f}",
    )


def quantize(
    model_bytes: bytes, public_pool: PublicPool, val: Split, config: QuantizeConfig
) -> QuantizeResult:
    """int8 if it is smaller and agrees with fp32 closely enough (see guard), else fp32.

    A model onnxruntime cannot quantize (e.g. non-finite activation ranges from a collapsed
    teacher) ships as fp32, with the reason.
    """
    fp32_acc = session_accuracy(make_session(model_bytes), val.x, val.y)
    if config.mode == "none":
        return QuantizeResult(
            model_bytes, False, "int8 not requested (quant-mode none)", fp32_acc, None, None
        )
    try:
        int8 = quantize_int8(model_bytes, public_pool, config)
    except (AssertionError, ValueError, RuntimeError) as err:
        reason = f"int8 refused: onnxruntime could not quantize ({type(err).__name__}: {err})"
        return QuantizeResult(model_bytes, False, reason, fp32_acc, None, None)
    int8_acc = session_accuracy(make_session(int8), val.x, val.y)
    inputs = check_inputs(public_pool, val)
    accepted, reason = guard(
        minified_size(model_bytes),
        minified_size(int8),
        disagreement(model_bytes, int8, inputs),
        len(inputs),
        config.tolerance,
        (fp32_acc, int8_acc),
    )
    return QuantizeResult(
        int8 if accepted else model_bytes, accepted, reason, fp32_acc, int8_acc, len(int8)
    )
