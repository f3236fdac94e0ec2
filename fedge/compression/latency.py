"""Predict a model's onnxruntime latency on a profiled device from its graph.

A device profile times the probe models (fedge.core.profile). Latency at these sizes is mostly
per-node overhead plus work, so per batch size the predictor fits, by non-negative least
squares over the probes,

    t = c0 + c1 x nodes + c2 x fp32 MACs + c3 x int8 MACs + c4 x activation elements

where nodes are counted after onnxruntime's own graph optimisations (fusions change them) and
MACs and elements come from the graph with inferred shapes at that batch size. Then it applies
the fit to any candidate's graph: no candidate has to run on the device.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference
from scipy.optimize import nnls

from fedge.compression.resources import batch_one_copy
from fedge.core.ort import cpu_options, weight_only
from fedge.core.profile import PROBE_DIR, Profile, probe_index

FEATURES = ("session", "nodes", "macs_fp32", "macs_int8", "elements")
QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm"}


@dataclass(frozen=True)
class Graph:
    """What the fit uses of one model, at batch 1 (MACs and elements scale with the batch)."""

    nodes: int
    macs: int
    elements: int
    int8: bool

    def row(self, batch: int) -> np.ndarray:
        """The feature row at `batch` (FEATURES order)."""
        fp32, int8 = (0, self.macs) if self.int8 else (self.macs, 0)
        return np.array([1.0, self.nodes, batch * fp32, batch * int8, batch * self.elements])


def graph_of(model: bytes) -> Graph:
    """Node count after onnxruntime's optimisations; MACs and activation elements at batch 1."""
    proto = onnx.load_from_string(model)
    # Weight-only int8 runs fp32 kernels: its weights are folded when the session loads.
    int8 = not weight_only(model) and any(n.op_type in QUANTIZED for n in proto.graph.node)
    inferred = shape_inference.infer_shapes(batch_one_copy(proto))
    shapes = {v.name: _dims(v) for v in inferred.graph.value_info}
    shapes |= {v.name: _dims(v) for v in (*inferred.graph.input, *inferred.graph.output)}
    shapes |= {t.name: list(t.dims) for t in inferred.graph.initializer}
    constants = {t.name for t in inferred.graph.initializer}
    macs = elements = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if not out or any(d <= 0 for d in out):
            continue
        if node.input and node.input[0] not in constants:  # activations, not weights
            elements += math.prod(out)
        weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and weight:
            macs += math.prod(out) * math.prod(weight[1:])
        elif node.op_type in ("Gemm", "MatMul") and weight and len(weight) == 2:
            macs += math.prod(out) * (weight[1] if _trans_b(node) else weight[0])
    return Graph(_optimized_nodes(model), macs, elements, int8)


def _dims(value: onnx.ValueInfoProto) -> list[int]:
    return [
        d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
    ]


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def _optimized_nodes(model: bytes) -> int:
    options = cpu_options(model)  # as sessions load it (weight-only int8: folded)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="fedge-latency-") as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        optimized = onnx.load(options.optimized_model_filepath)
    return len(optimized.graph.node)


@lru_cache(maxsize=1)
def probe_graphs() -> dict[str, Graph]:
    """Every shipped probe's graph features (the same on every device)."""
    return {
        name: graph_of((PROBE_DIR / str(row["file"])).read_bytes())
        for name, row in probe_index().items()
    }


@dataclass(frozen=True)
class LatencyModel:
    """A fit per batch size of one device's probe latencies."""

    profile: Profile
    coefficients: dict[int, np.ndarray]  # batch -> FEATURES coefficients (µs per unit)

    def predict_us(self, model: bytes | Graph, batch: int = 1) -> float:
        """Predicted p50 microseconds of `model` at `batch` (a batch the profile measured)."""
        if batch not in self.coefficients:
            raise ValueError(
                f"the profile measured batches {sorted(self.coefficients)}, not {batch}"
            )
        graph = model if isinstance(model, Graph) else graph_of(model)
        return float(graph.row(batch) @ self.coefficients[batch])


def fit(profile: Profile) -> LatencyModel:
    """Fit the per-batch linear model to the profile's probe latencies."""
    graphs = probe_graphs()
    coefficients = {}
    for batch in profile.batches:
        names = sorted(profile.latency_us)
        rows = np.stack([graphs[n].row(batch) for n in names])
        scale = rows.max(axis=0)  # columns of comparable size for the solver
        scale[scale == 0] = 1.0
        solution, _ = nnls(rows / scale, np.array([profile.latency_us[n][batch] for n in names]))
        coefficients[batch] = solution / scale
    return LatencyModel(profile, coefficients)
