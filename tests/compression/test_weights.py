"""Weight-only int8 (quant-mode weights): differential against fp32, folded when sessions load."""

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from fedge.client.runtime.session import device_session
from fedge.compression.export import ExportConfig, export_onnx
from fedge.compression.quantize import quantize
from fedge.compression.weights import weight_only_int8
from fedge.core import onnx_scan
from fedge.core.models import build_student
from fedge.core.ort import FOLD_QDQ, cpu_options, make_session, session_accuracy, weight_only
from tests.compression.configs import SHAPE, STATIC

WEIGHTS = dataclasses.replace(STATIC, mode="weights")


@pytest.fixture(scope="module")
def fp32(teacher) -> bytes:
    return export_onnx(teacher, SHAPE, ExportConfig())


def test_weight_only_model_is_int8_sized_and_answers_as_fp32(fp32, digits_fed):
    int8 = weight_only_int8(fp32)
    assert len(int8) < len(fp32) / 3
    x = digits_fed.server.test.x
    logits = make_session(fp32).run(None, {"input": x})[0]
    int8_logits = make_session(int8).run(None, {"input": x})[0]
    # Only weights are rounded (to 1/254 of each channel's range): logits move a little, the
    # classes of the test split almost never.
    assert np.abs(logits - int8_logits).max() < 0.05 * np.abs(logits).max()
    assert (logits.argmax(1) != int8_logits.argmax(1)).mean() <= 0.01


def test_only_weights_are_int8_and_activations_stay_float(fp32):
    proto = onnx.load_from_string(weight_only_int8(fp32))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" not in ops and ops.count("DequantizeLinear") == 4  # 2 convs, 2 linears
    int8 = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    weights = [numpy_helper.to_array(t) for t in int8 if t.name.endswith("_int8")]
    assert len(weights) == 4 and all(
        np.abs(w).max() == 127 for w in weights
    )  # symmetric, full range
    floats = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert all(numpy_helper.to_array(t).ndim <= 1 for t in floats)  # biases and scales only


def test_per_channel_scales_have_one_scale_per_output_channel(fp32):
    def scales(model: bytes) -> list[int]:
        proto = onnx.load_from_string(model)
        return [
            numpy_helper.to_array(t).size
            for t in proto.graph.initializer
            if t.name.endswith("_scale")
        ]

    assert scales(weight_only_int8(fp32, per_channel=True)) == [32, 64, 256, 10]
    assert scales(weight_only_int8(fp32, per_channel=False)) == [1, 1, 1, 1]


def test_sessions_fold_weight_only_models_and_static_ones_only_where_int8_saturates(
    fp32, digits_fed, monkeypatch
):
    int8 = weight_only_int8(fp32)
    static = quantize(fp32, digits_fed.server.public_pool, digits_fed.server.val, STATIC)
    assert static.quantized
    static = static.model_bytes
    assert weight_only(int8) and not weight_only(fp32) and not weight_only(static)
    monkeypatch.setattr("fedge.core.ort.int8_saturates", lambda: False)  # ARM, or x86 with VNNI
    assert cpu_options(int8).get_session_config_entry(FOLD_QDQ) == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        cpu_options(static).get_session_config_entry(FOLD_QDQ)
    monkeypatch.setattr("fedge.core.ort.int8_saturates", lambda: True)  # x86 without VNNI
    assert cpu_options(static).get_session_config_entry(FOLD_QDQ) == "1"
    assert not weight_only(b"\xff not a protobuf")  # onnxruntime refuses such bytes itself


def test_folding_leaves_no_dequantize_node_at_run_time(fp32, tmp_path):
    import onnxruntime as ort

    int8 = weight_only_int8(fp32)

    def optimized_ops(options: ort.SessionOptions) -> set[str]:
        options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
        ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
        return {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}

    assert "DequantizeLinear" not in optimized_ops(cpu_options(int8))  # fp32 weights, fp32 kernels
    unfolded = ort.SessionOptions()
    unfolded.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert "DequantizeLinear" in optimized_ops(unfolded)  # what onnxruntime does by default


def test_device_session_gives_the_servers_answers(fp32, digits_fed):
    int8 = weight_only_int8(fp32)
    x = digits_fed.server.test.x
    server = make_session(int8).run(None, {"input": x})[0]
    device = device_session(int8).run(None, {"input": x})[0]
    np.testing.assert_array_equal(server, device)


def test_quantize_ships_weights_mode_through_the_same_guard(fp32, digits_fed):
    result = quantize(fp32, digits_fed.server.public_pool, digits_fed.server.val, WEIGHTS)
    assert result.quantized and "int8 accepted" in result.reason
    assert weight_only(result.model_bytes)
    test = digits_fed.server.test
    fp32_acc = session_accuracy(make_session(fp32), test.x, test.y)
    assert (
        abs(session_accuracy(make_session(result.model_bytes), test.x, test.y) - fp32_acc) <= 0.01
    )


def test_a_model_without_weights_is_refused():
    student = build_student((16,), 10, "tiny", 0)
    fp32 = export_onnx(student, (16,), ExportConfig())
    proto = onnx.load_from_string(weight_only_int8(fp32))  # an MLP: Gemm weights
    assert {n.op_type for n in proto.graph.node} >= {"DequantizeLinear", "Gemm"}
    with pytest.raises(ValueError, match="no Conv, Gemm or MatMul weight"):
        weight_only_int8(weight_only_int8(fp32))  # already int8: nothing float left


def test_op_types_reads_the_main_graph(fp32):
    assert onnx_scan.op_types(fp32) == {n.op_type for n in onnx.load_from_string(fp32).graph.node}


def _graph(nodes, inputs, initializers, opset: int = 17) -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])
    graph = helper.make_graph(nodes, "g", [x, *inputs], [y], initializer=initializers)
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)]
    ).SerializeToString()


def _weight(shape, seed: int = 0):
    rng = np.random.default_rng(seed)
    # Each output column on its own scale: a wrong channel axis shows as a large error.
    return (rng.normal(size=shape) * np.logspace(-2, 1, shape[-1])).astype(np.float32)


@pytest.mark.parametrize(
    ("op", "attrs", "shape"),
    [("Gemm", {}, (4, 5)), ("Gemm", {"transB": 1}, (5, 4)), ("MatMul", {}, (4, 5))],
)
def test_every_weight_layout_keeps_each_output_channel_within_its_rounding(op, attrs, shape):
    from onnx import helper

    w = _weight(shape)
    model = _graph(
        [helper.make_node(op, ["x", "w"], ["y"], **attrs)], [], [numpy_helper.from_array(w, "w")]
    )
    x = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    exact = make_session(model).run(None, {"x": x})[0]
    rounded = make_session(weight_only_int8(model)).run(None, {"x": x})[0]
    # Per output column, the error is a rounding of that column's own scale (1/254 of its range).
    col = np.abs(exact).max(0) + 1e-6
    assert (np.abs(rounded - exact).max(0) / col).max() < 0.05


def test_a_shared_weight_is_stored_once_and_a_weight_that_is_an_input_is_left_alone():
    from onnx import TensorProto, helper

    w = _weight((4, 4))
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["h2"]),  # the same weight again
        helper.make_node("MatMul", ["h2", "v"], ["y"]),  # v: an input with a default
    ]
    v_input = helper.make_tensor_value_info("v", TensorProto.FLOAT, [4, 4])
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w, "v")]
    proto = onnx.load_from_string(weight_only_int8(_graph(nodes, [v_input], inits)))
    dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
    assert [n.output[0] for n in dq] == ["w"]  # once, for w only
    assert {t.name for t in proto.graph.initializer} >= {"v", "w_int8"}


def test_names_the_graph_already_uses_are_not_reused():
    from onnx import helper

    w = _weight((4, 4))
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["w_int8"]),  # a tensor already named w_int8
        helper.make_node("Relu", ["w_int8"], ["y"]),
    ]
    model = weight_only_int8(_graph(nodes, [], [numpy_helper.from_array(w, "w")]))
    onnx.checker.check_model(onnx.load_from_string(model))
    assert "w_int8_2" in {t.name for t in onnx.load_from_string(model).graph.initializer}


def test_a_graph_it_cannot_rewrite_ships_fp32_with_the_reason():
    from onnx import helper

    from fedge.core.partition import PublicPool, Split

    w = _weight((4, 4))
    old = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [],
        [numpy_helper.from_array(w, "w")],
        opset=11,
    )
    with pytest.raises(ValueError, match="needs opset >= 13"):
        weight_only_int8(old)
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    result = quantize(old, PublicPool(x=x), Split(x=x, y=np.array([0, 1])), WEIGHTS)
    assert result.model_bytes == old and not result.quantized
    assert "could not quantize (ValueError: weight-only int8 needs opset >= 13" in result.reason


def test_the_device_session_is_told_to_fold(fp32):
    int8 = weight_only_int8(fp32)
    options = device_session(int8).get_session_options()
    assert options.get_session_config_entry(FOLD_QDQ) == "1"


def test_the_latency_model_sees_fp32_kernels(fp32):
    from fedge.compression.latency import graph_of

    folded, plain = graph_of(weight_only_int8(fp32)), graph_of(fp32)
    assert not folded.int8 and (folded.nodes, folded.macs) == (plain.nodes, plain.macs)


def test_the_phone_artifact_is_saved_folded(fp32):
    from fedge.compression.targets import to_ort

    int8 = weight_only_int8(fp32)
    assert len(to_ort(int8)) > 3 * len(int8)  # fp32 weights inside: no dequantize per call


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "saturates"),
    [
        ("x86_64", "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n", True),  # this host
        ("x86_64", "flags\t\t: avx2 avx512f avx512_vnni\n", False),
        ("x86_64", "flags\t\t: avx2 avx_vnni\n", False),
        ("aarch64", "Features\t: fp asimd\n", False),  # ARM kernels do not saturate
        ("x86_64", "", False),  # no /proc/cpuinfo: onnxruntime's own kernels
    ],
)
def test_int8_kernels_are_judged_to_saturate_only_on_x86_without_vnni(machine, cpuinfo, saturates):
    from fedge.core.ort import saturating_cpu

    assert saturating_cpu(machine, cpuinfo) is saturates
