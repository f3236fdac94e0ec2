"""Quantization-aware training: fine-tune the student under simulated int8, export QDQ ONNX.

Weights are fake-quantized per output channel (symmetric int8) and the input of every conv and
linear layer per tensor (asymmetric int8, range calibrated once on the public pool), with
torch's own fake-quantize ops, whose straight-through gradients let KD fine-tuning adapt the
weights to the rounding. torch's exporter turns the fake-quantize ops into QuantizeLinear /
DequantizeLinear pairs; the weights' pairs are then folded into int8 initializers, so the file
holds int8 weights and onnxruntime runs the graph with its int8 kernels.

Why not a library: torch.ao.quantization is deprecated and its quantized modules do not export
to ONNX; torchao's QAT targets torch's own int8 kernels, not ONNX; NNCF would pull in a large
dependency for two fake-quantize ops that torch provides (checked against torch 2.13).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
import torch.nn.functional as F  # noqa: N812
from onnx import numpy_helper
from torch import nn

from fedge.compression.distill import require_public_pool
from fedge.compression.export import INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME, strip_metadata
from fedge.compression.kd import KDConfig, kd_train
from fedge.compression.minify import minified_size
from fedge.compression.quantize import QuantizeResult, accuracy_guard
from fedge.core.config import RunConfig
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import PublicPool, Split

QMIN, QMAX = -128, 127
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class QATConfig:
    """When and how to train with simulated int8 (built from the run's settings)."""

    mode: str  # off | fallback (when post-training int8 loses too much) | always (qat)
    epochs: int  # KD fine-tuning epochs under simulated int8 (qat-epochs)
    kd: KDConfig  # KD from the fp32 student to its int8 self (soft labels, augmented views)
    static: bool  # static int8 was asked for (QAT makes static int8 only) (quant-mode)
    tolerance: float  # validation accuracy int8 may lose against fp32 (int8-tolerance)
    lr: float = 0.001  # Adam learning rate (cosine decay)

    @classmethod
    def from_run(cls, cfg: RunConfig) -> QATConfig:
        """QAT as the run sets it.

        The teacher is the fp32 student itself: its own probabilities (temperature 1) on views
        of the pool, which say nothing about members it did not already say.
        """
        kd = dataclasses.replace(
            KDConfig.from_run(cfg), labels="soft", queries="augmented", temperature=1.0
        )
        return cls(
            mode=cfg.qat,
            epochs=cfg.qat_epochs,
            kd=kd,
            static=cfg.quant_mode == "static",
            tolerance=cfg.int8_tolerance,
        )


class _ActivationQuant(nn.Module):
    """Per-tensor asymmetric int8 fake quantization of a layer's input.

    The range starts from the calibration min/max; in training its step size is learned
    (LSQ, Esser et al. 2020: torch's learnable fake-quantize op), so the grid can trade a little
    clipping of rare large values for finer steps everywhere else. The zero point stays fixed.
    """

    zero_point: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))

    def calibrate(self, low: float, high: float) -> None:
        """Set the range from observed values (always including 0, as int8 zero must be exact)."""
        low, high = min(low, 0.0), max(high, 0.0)
        scale = max((high - low) / (QMAX - QMIN), 1e-8)
        with torch.no_grad():
            self.scale.fill_(scale)
        self.zero_point.fill_(int(np.clip(round(QMIN - low / scale), QMIN, QMAX)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X rounded to the int8 grid (straight-through gradient; the step size learns too)."""
        if self.training:
            grad_factor = 1.0 / float(np.sqrt(x.numel() * QMAX))
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, self.scale, self.zero_point.float(), QMIN, QMAX, grad_factor
            )
        scale = self.scale.detach().clamp(min=1e-8)
        return torch.fake_quantize_per_tensor_affine(x, scale, self.zero_point, QMIN, QMAX)


class QuantLayer(nn.Module):
    """A conv or linear layer with int8 fake-quantized input and per-channel int8 weights."""

    frozen_scale: torch.Tensor

    def __init__(self, layer: nn.Conv1d | nn.Conv2d | nn.Linear) -> None:
        super().__init__()
        self.layer = layer
        self.input_quant = _ActivationQuant()
        self.calibrating = False
        self.low, self.high = float("inf"), float("-inf")
        self.register_buffer("frozen_scale", torch.zeros(0))

    def weight_scale(self) -> torch.Tensor:
        """Symmetric per-output-channel scale of the weights (fixed once frozen for export)."""
        if len(self.frozen_scale):
            return self.frozen_scale
        weight = self.layer.weight.detach()
        return weight.abs().flatten(1).amax(1).clamp(min=1e-8) / QMAX

    def freeze(self) -> None:
        """Fix the weight scales: the exported graph then holds constants, not their formula."""
        self.frozen_scale = self.weight_scale().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer on the int8 grid: fake-quantized input and weights, float bias."""
        if self.calibrating:
            self.low = min(self.low, float(x.min()))
            self.high = max(self.high, float(x.max()))
            return self.layer(x)
        x = self.input_quant(x)
        scale = self.weight_scale()
        zeros = torch.zeros(len(scale), dtype=torch.int32)
        weight = torch.fake_quantize_per_channel_affine(
            self.layer.weight, scale, zeros, 0, QMIN, QMAX
        )
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, weight, self.layer.bias)
        return self.layer._conv_forward(x, weight, self.layer.bias)


def quantization_aware(model: nn.Module, calibration: np.ndarray) -> nn.Module:
    """A copy of `model` with every conv and linear layer wrapped in QuantLayer, calibrated."""
    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LAYERS):
                setattr(module, child_name, QuantLayer(child))
        del name
    layers = [m for m in model.modules() if isinstance(m, QuantLayer)]
    for layer in layers:
        layer.calibrating = True
    with torch.no_grad():
        model(torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32)))
    for layer in layers:
        layer.calibrating = False
        layer.input_quant.calibrate(layer.low, layer.high)
    return model


def qat_train(
    student: nn.Module, teacher: nn.Module, public_pool: PublicPool, config: QATConfig
) -> nn.Module:
    """The student fine-tuned by KD under simulated int8 (a new module; `student` is untouched)."""
    pool = require_public_pool(public_pool)
    model = quantization_aware(student, pool.x)
    kd_train(model, teacher, pool.x, config.kd, epochs=config.epochs, lr=config.lr)
    for layer in model.modules():
        if isinstance(layer, QuantLayer):
            layer.freeze()
    return model.eval()


def export_qdq(model: nn.Module, input_shape: tuple[int, ...], opset: int = 17) -> bytes:
    """QDQ ONNX of a quantization-aware model, with int8 weight initializers.

    Outputs `logits` and `probabilities`, like export.export_onnx.
    """

    class WithProbabilities(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(x)
            return logits, torch.softmax(logits, dim=1)

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            WithProbabilities().eval(),
            (torch.zeros(1, *input_shape),),
            buffer,  # type: ignore[arg-type]
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, PROBABILITIES_NAME],
            dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, OUTPUT_NAME, PROBABILITIES_NAME)},
            opset_version=opset,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    strip_metadata(proto)
    fold_weight_quantization(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def fold_weight_quantization(proto: onnx.ModelProto) -> None:
    """Replace QuantizeLinear(constant float weight) by the int8 constant it computes."""
    graph = proto.graph
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:  # the exporter writes some scales as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    keep = []
    for node in graph.node:
        inputs = list(node.input)
        if node.op_type != "QuantizeLinear" or not all(name in constants for name in inputs[:3]):
            keep.append(node)
            continue
        weight, scale, zero = (numpy_helper.to_array(constants[name]) for name in inputs[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * weight.ndim
        if scale.ndim == 1 and scale.size > 1:
            shape[axis] = -1
        quantized = np.clip(
            np.round(weight / scale.reshape(shape)) + zero.reshape(shape).astype(np.int32),
            QMIN,
            QMAX,
        ).astype(np.int8)
        graph.initializer.append(numpy_helper.from_array(quantized, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


def quantize_with_qat(
    student: nn.Module,
    public_pool: PublicPool,
    val: Split,
    ptq: QuantizeResult,
    config: QATConfig,
    *,
    input_shape: tuple[int, ...],
    tolerance: float,
) -> QuantizeResult:
    """int8 by quantization-aware training, under the same guard as post-training int8.

    The teacher is the fp32 student itself (self-distillation on the public pool): the int8
    model learns to do what the fp32 one does, including what it learned from the clients'
    data in federated rounds, which the public pool alone would not teach it again. `ptq` is
    the refused post-training result (its model is the fp32 one). A retrained model may differ
    from fp32 and be as good, so it is judged by validation accuracy (accuracy_guard), not by
    agreement; the answer is the QAT model if accepted, else `ptq` with both reasons.
    """
    model = qat_train(student, copy.deepcopy(student).eval(), public_pool, config)
    qdq = export_qdq(model, input_shape)
    accuracy = session_accuracy(make_session(qdq), val.x, val.y)
    accepted, reason = accuracy_guard(
        minified_size(ptq.model_bytes),
        minified_size(qdq),
        (ptq.fp32_val_accuracy, accuracy),
        tolerance,
    )
    if not accepted:
        return dataclasses.replace(ptq, reason=f"{ptq.reason}; after QAT: {reason}")
    return QuantizeResult(
        qdq,
        True,
        f"{reason.replace('int8 accepted', 'int8 by quantization-aware training')} "
        f"(post-training {ptq.reason.removeprefix('int8 refused: ')})",
        ptq.fp32_val_accuracy,
        accuracy,
        len(qdq),
    )
