"""Resources of ONNX models: hand-computed graphs, the formulas, and onnxruntime's own tensors."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fedge.compression import resources
from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.compression.quantize import quantize_int8
from fedge.core.models import build_student
from fedge.core.ort import make_session
from tests.compression.configs import SHAPE, STATIC

DEFAULT_STUDENT = "deep-small"  # the first of the default auto-students


def model(nodes, inputs, outputs, weights=()) -> bytes:
    """A checked opset-17 model of `nodes` (weights: name -> array)."""
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        outputs,
        [numpy_helper.from_array(a, n) for n, a in dict(weights).items()],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def f32(name: str, *dims: int | str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def test_arena_is_the_hand_computed_live_maximum():
    # x[1,8] -> Relu a -> MatMul b[1,16] -> Relu c -> MatMul d[1,8] -> Add(d, x) y: x stays live.
    # Bytes live per node: 32+32, 32+32+64, 32+64+64 (the peak), 32+64+32, 32+32+32.
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(8, 16)), rng.normal(size=(16, 8))
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("MatMul", ["a", "w1"], ["b"]),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("MatMul", ["c", "w2"], ["d"]),
        helper.make_node("Add", ["d", "x"], ["y"]),
    ]
    weights = {"w1": w1.astype(np.float32), "w2": w2.astype(np.float32)}
    got = resources.measure(model(nodes, [f32("x", "batch", 8)], [f32("y", "batch", 8)], weights))
    assert got.arena_bytes == 32 + 64 + 64  # weights are flash, not arena
    assert got.macs == 8 * 16 + 16 * 8
    assert got.params == 8 * 16 + 16 * 8


def test_qdq_pairs_are_fused_as_an_int8_runtime_runs_them():
    # x -> Q xq -> DQ xf -> Relu r -> Q rq -> DQ y. Fused: Relu reads xq and writes rq (int8).
    # Live per node: x 32 + xq 8; xq 8; xq 8 + rq 8; rq 8; rq 8 + y 32. Unfused Relu: 64 bytes.
    scale, zero = (
        numpy_helper.from_array(np.float32(0.1), "s"),
        numpy_helper.from_array(np.int8(0), "z"),
    )
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"]),
        helper.make_node("Relu", ["xf"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [f32("x", 1, 8)], [f32("y", 1, 8)], [scale, zero])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert resources.measure(proto.SerializeToString()).arena_bytes == 40


def test_macs_of_conv_and_gemm_are_the_formula():
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    grouped = rng.normal(size=(8, 2, 3, 3)).astype(np.float32)  # 4 groups of 2 channels
    dense = rng.normal(size=(5, 8 * 4 * 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv", "bias"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "grouped"], ["b"], strides=[2, 2], group=4),
        helper.make_node("Flatten", ["b"], ["c"]),
        helper.make_node("Gemm", ["c", "dense"], ["y"], transB=1),
    ]
    weights = {"conv": conv, "bias": np.zeros(8, np.float32), "grouped": grouped, "dense": dense}
    onnx_model = model(nodes, [f32("x", "N", 3, 10, 10)], [f32("y", "N", 5)], weights)
    got = resources.measure(onnx_model)
    # output elements x input channels per group x kernel; Gemm: outputs x inner dimension
    assert got.macs == 8 * 10 * 10 * 3 * 9 + 8 * 4 * 4 * 2 * 9 + 5 * 128
    assert got.params == conv.size + 8 + grouped.size + dense.size
    assert got.flash_bytes == len(onnx_model)
    assert make_session(onnx_model).run(None, {"x": np.zeros((1, 3, 10, 10), np.float32)})


@pytest.fixture(scope="module")
def device_models(digits_fed) -> dict[str, bytes]:
    """The default student as devices get it (untrained): fp32, QDQ and QOperator int8."""
    fp32 = export_onnx(build_student(SHAPE, 10, DEFAULT_STUDENT, 0), SHAPE, ExportConfig())
    pool, prep, val = (
        digits_fed.server.public_pool,
        digits_fed.dataset.preprocessing,
        digits_fed.server.val,
    )
    qop = dataclasses.replace(STATIC, format="qoperator")
    return {
        name: fold_device_ops(graph, prep, val.x, atol=1e-2)
        for name, graph in (
            ("fp32", fp32),
            ("qdq", quantize_int8(fp32, pool, STATIC)),
            ("qoperator", quantize_int8(fp32, pool, qop)),
        )
    }


def ort_tensors(onnx_model: bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every node output as onnxruntime computes it at batch 1."""
    proto = onnx.load_from_string(onnx_model)
    known = {o.name for o in proto.graph.output}
    extra = [out for node in proto.graph.node for out in node.output if out and out not in known]
    proto.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in extra)
    session = make_session(proto.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: x[:1]})
    return {"input": x[:1], **dict(zip(names, values, strict=True))}


def naive_arena(onnx_model: bytes, tensors: dict[str, np.ndarray]) -> int:
    """Live-set maximum of a float graph from onnxruntime's arrays, step by step."""
    graph = onnx.load_from_string(onnx_model).graph
    flash = {t.name for t in graph.initializer}
    for node in graph.node:
        if all(name in flash for name in node.input):
            flash.update(node.output)
    steps = range(len(graph.node))
    touched = {name: [i for i in steps if name in (*graph.node[i].input, *graph.node[i].output)]
               for name in tensors if name not in flash}  # fmt: skip
    span = {name: (min(at, default=0), max(at, default=0)) for name, at in touched.items()}
    for value in graph.output:
        span[value.name] = (span[value.name][0], len(graph.node) - 1)
    return max(
        sum(tensors[n].nbytes for n, (lo, hi) in span.items() if lo <= i <= hi) for i in steps
    )


def test_default_student_arena_agrees_with_onnxruntime_tensors(device_models, digits_fed):
    raw = digits_fed.dataset.preprocessing.invert(digits_fed.server.val.x)
    fp32 = device_models["fp32"]
    tensors = ort_tensors(fp32, raw)
    assert resources.measure(fp32).arena_bytes == naive_arena(fp32, tensors)
    for name, onnx_model in device_models.items():  # every activation's size, int8 ones too
        actual = ort_tensors(onnx_model, raw)
        sizes = resources.tensor_bytes(resources.at_batch_one(onnx.load_from_string(onnx_model)))
        assert sizes == {n: actual[n].nbytes for n in sizes}, name
        assert any(actual[n].itemsize == 1 for n in sizes) == (name != "fp32")  # int8 or uint8


def test_int8_formats_agree_and_need_less_than_fp32(device_models):
    fp32, qdq, qop = (resources.measure(device_models[n]) for n in ("fp32", "qdq", "qoperator"))
    assert qdq.macs == qop.macs == fp32.macs > 0
    assert qdq.params == qop.params == fp32.params > 0
    assert qdq.arena_bytes == qop.arena_bytes  # QDQ fused by rule = QOperator's int8 ops
    assert qdq.arena_bytes < fp32.arena_bytes / 2
    assert qdq.flash_bytes == len(device_models["qdq"]) < fp32.flash_bytes


def test_an_unmeasurable_graph_is_none_with_a_warning(caplog):
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)  # no shape to infer it from
    graph = helper.make_graph([node], "g", [f32("x", 1, 4)], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    assert resources.measured(proto.SerializeToString(), "candidate odd") is None
    assert "resources of candidate odd not measured" in caplog.text
