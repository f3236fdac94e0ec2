"""Export stage: torch -> ONNX bytes, checked by onnx.checker, with no metadata carrying local paths."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from fedge.core.config import RunConfig
from fedge.core.data import Preprocessing
from fedge.core.ort import make_session

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PROBABILITIES_NAME = "probabilities"


class _WithProbabilities(nn.Module):
    """Adds a softmax output, so devices get probabilities from onnxruntime, not numpy."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class ExportConfig:
    """How to export."""

    opset: int = 17  # ONNX opset; 17 is well supported by onnxruntime quantization

    @classmethod
    def from_run(cls, cfg: RunConfig) -> ExportConfig:
        """No run setting changes the export."""
        return cls()


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], config: ExportConfig) -> bytes:
    """Serialise `model` to a self-contained ONNX model with a dynamic batch axis.

    Outputs: `logits`, then `probabilities` (softmax of the logits).
    """
    model = _WithProbabilities(model.eval()).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
        torch.onnx.export(
            model,
            (torch.zeros(1, *input_shape),),
            buffer,  # type: ignore[arg-type]  # file-like objects work; the stub says path
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, PROBABILITIES_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "batch"},
                OUTPUT_NAME: {0: "batch"},
                PROBABILITIES_NAME: {0: "batch"},
            },
            opset_version=config.opset,
            dynamo=False,  # the dynamo exporter needs onnxscript and embeds source paths
        )
    proto = onnx.load_from_string(buffer.getvalue())
    strip_metadata(proto)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def strip_metadata(proto: onnx.ModelProto) -> None:
    """Drop doc strings and metadata props (they can carry stack traces with local paths)."""
    proto.doc_string = ""
    proto.graph.doc_string = ""
    del proto.metadata_props[:]
    for node in proto.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    proto.producer_name = "fedge"
    proto.producer_version = ""


LABEL_NAME = "label"


@dataclass(frozen=True)
class DeviceConfig:
    """How the device model is made from the compressed one (preprocessing and label folded in)."""

    atol: float = 1e-4  # probabilities of the device model vs the compressed model on validation

    @classmethod
    def from_run(cls, cfg: RunConfig) -> DeviceConfig:
        """No run setting changes the device model."""
        return cls()


def fold_device_ops(
    model_bytes: bytes, prep: Preprocessing, check_x: np.ndarray, atol: float = 1e-4
) -> bytes:
    """The model as shipped to devices: raw input in, probabilities and label out.

    Prepends the affine preprocessing ((x - shift) * scale, as Mul/Add nodes) and appends an
    ArgMax `label` output, so a device's Python does no numpy work per call. The result passes
    onnx.checker and must agree with `model_bytes` on `check_x` (model inputs) fed raw.
    """
    shift, scale = prep.arrays()
    proto = onnx.load_from_string(model_bytes)
    graph = proto.graph
    raw = graph.input[0].name
    normalized = f"{raw}__normalized"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == raw:
                node.input[i] = normalized
    graph.initializer.extend(
        [
            numpy_helper.from_array(scale.astype(np.float32), "fedge__scale"),
            numpy_helper.from_array((-shift * scale).astype(np.float32), "fedge__offset"),
        ]
    )
    pre = [
        helper.make_node(
            "Mul", [raw, "fedge__scale"], [f"{raw}__scaled"], name="fedge_preprocess_scale"
        ),
        helper.make_node(
            "Add", [f"{raw}__scaled", "fedge__offset"], [normalized], name="fedge_preprocess_shift"
        ),
    ]
    nodes = [*pre, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    outputs = [o.name for o in graph.output]
    if PROBABILITIES_NAME not in outputs:
        raise ValueError(f"model has no {PROBABILITIES_NAME!r} output (outputs: {outputs})")
    graph.node.append(
        helper.make_node(
            "ArgMax", [PROBABILITIES_NAME], [LABEL_NAME], axis=1, keepdims=0, name="fedge_label"
        )
    )
    graph.output.append(
        helper.make_tensor_value_info(LABEL_NAME, onnx.TensorProto.INT64, ["batch"])
    )
    onnx.checker.check_model(proto, full_check=True)
    folded = proto.SerializeToString()
    _check_agreement(model_bytes, folded, check_x, prep.invert(check_x), atol)
    return folded


def _check_agreement(
    model: bytes, folded: bytes, x: np.ndarray, raw: np.ndarray, atol: float
) -> None:
    expected = make_session(model).run([PROBABILITIES_NAME], {INPUT_NAME: x})[0]
    probabilities, labels = make_session(folded).run(
        [PROBABILITIES_NAME, LABEL_NAME], {INPUT_NAME: raw}
    )
    # Labels must agree wherever the top class is clear; a (near-)tie may break either way.
    top2 = np.sort(np.nan_to_num(expected, nan=0.0), axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0] > 1e-4) & np.isfinite(expected).all(axis=1)
    if not np.allclose(expected, probabilities, atol=atol, equal_nan=True) or not np.array_equal(
        labels[clear], expected.argmax(1)[clear]
    ):
        raise RuntimeError(
            "the device model with folded preprocessing disagrees with the compressed model"
        )
