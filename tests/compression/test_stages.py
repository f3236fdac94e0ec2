"""Each compression verb, checked differentially against the model it came from."""

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fedge.compression.distill import DistillConfig, distill
from fedge.compression.export import ExportConfig, export_onnx
from fedge.compression.kd import KDConfig
from fedge.compression.prune import PruneConfig, prune
from fedge.compression.quantize import QuantizeConfig, guard, quantize
from fedge.core.models import build_student, count_params
from fedge.core.ort import make_session, session_accuracy, session_logits
from fedge.core.training import evaluate, predict_logits
from tests.compression.configs import SHAPE, STATIC

KD = KDConfig(temperature=4.0, labels="soft", queries="augmented", seed=0)


def quant(**changes) -> QuantizeConfig:
    return dataclasses.replace(STATIC, **changes)


@pytest.fixture(scope="module")
def student(teacher, digits_fed):
    return distill(
        teacher,
        digits_fed.server.public_pool,
        DistillConfig(student="small", epochs=80, kd=KD),  # 40 was marginal on an AVX2 host
        input_shape=SHAPE,
        num_classes=10,
    )


def test_distilled_student_learns_the_teacher(teacher, student, digits_fed):
    test = digits_fed.server.test
    untrained = build_student(SHAPE, 10, "small", seed=0)
    assert count_params(student) < count_params(teacher) / 20
    agree = (
        predict_logits(student, test.x).argmax(1) == predict_logits(teacher, test.x).argmax(1)
    ).mean()
    assert agree > 0.8
    assert evaluate(student, test.x, test.y)[1] > evaluate(untrained, test.x, test.y)[1] + 0.5


def test_compression_refuses_anything_but_the_public_pool(teacher, digits_fed):
    with pytest.raises(TypeError, match="only a PublicPool"):
        distill(
            teacher,
            digits_fed.server.val,
            DistillConfig(student="small", epochs=1, kd=KD),
            input_shape=SHAPE,
            num_classes=10,
        )


def test_onnx_matches_torch(teacher, digits_fed):
    x = digits_fed.server.test.x[:64]
    session = make_session(export_onnx(teacher, SHAPE, ExportConfig()))
    np.testing.assert_allclose(
        session_logits(session, x), predict_logits(teacher, x), rtol=1e-4, atol=1e-4
    )


def test_export_carries_no_local_paths_or_metadata(teacher):
    proto = onnx.load_from_string(export_onnx(teacher, SHAPE, ExportConfig()))
    assert not proto.metadata_props and not proto.doc_string
    assert all(not n.doc_string and not n.metadata_props for n in proto.graph.node)
    repo = str(Path(__file__).resolve().parents[2]).encode()
    assert repo not in proto.SerializeToString() and b".py" not in proto.SerializeToString()


def test_pruning_removes_parameters_and_keeps_the_output_shape(teacher, student, digits_fed):
    pool = digits_fed.server.public_pool
    pruned = prune(
        student,
        teacher,
        pool,
        PruneConfig(ratio=0.5, sparsity=0.0, finetune_epochs=10, kd=KD),
        input_shape=SHAPE,
    )
    assert count_params(pruned) < 0.5 * count_params(student)
    x = torch.from_numpy(digits_fed.server.test.x[:5])
    assert pruned(x).shape == student(x).shape == (5, 10)
    # physically smaller: the exported file shrinks too (masks would not)
    assert len(export_onnx(pruned, SHAPE, ExportConfig())) < 0.6 * len(
        export_onnx(student, SHAPE, ExportConfig())
    )
    test = digits_fed.server.test
    assert evaluate(pruned, test.x, test.y)[1] > 0.8


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_int8_is_smaller_and_within_tolerance_of_fp32(teacher, digits_fed, fmt):
    fp32 = export_onnx(teacher, SHAPE, ExportConfig())
    result = quantize(
        fp32,
        digits_fed.server.public_pool,
        digits_fed.server.val,
        quant(format=fmt, tolerance=0.02),
    )
    assert result.quantized, result.reason
    assert len(result.model_bytes) < len(fp32) / 3
    test = digits_fed.server.test
    fp32_acc = session_accuracy(make_session(fp32), test.x, test.y)
    assert session_accuracy(make_session(result.model_bytes), test.x, test.y) >= fp32_acc - 0.02


@pytest.mark.parametrize(
    ("fp32_bytes", "int8_bytes", "disagreed", "accepted", "why"),
    [
        (1000, 300, 0.0, True, "int8 accepted: 1000 -> 300 bytes, disagrees with fp32 on 0.00 %"),
        (1000, 300, 0.009, True, "int8 accepted"),  # within 1 %
        (1000, 300, 0.02, False, "disagrees with fp32 on 2.00 % of 500 validation and public"),
        (1000, 1200, 0.0, False, "not smaller (1200 >= 1000 bytes)"),
    ],
)
def test_int8_guard(fp32_bytes, int8_bytes, disagreed, accepted, why):
    ok, reason = guard(fp32_bytes, int8_bytes, disagreed, 500, 0.01, (0.95, 0.94))
    assert ok is accepted and why in reason


def test_disagreement_bounds_the_accuracy_int8_loses(teacher, digits_fed):
    """Differential: on labeled inputs, accuracy lost <= share of changed top classes."""
    from fedge.compression.quantize import disagreement, quantize_int8

    pool, test = digits_fed.server.public_pool, digits_fed.server.test
    fp32 = export_onnx(teacher, SHAPE, ExportConfig())
    int8 = quantize_int8(fp32, pool, quant(per_channel=False))
    lost = session_accuracy(make_session(fp32), test.x, test.y) - session_accuracy(
        make_session(int8), test.x, test.y
    )
    assert lost <= disagreement(fp32, int8, test.x) + 1e-9
    assert disagreement(fp32, fp32, test.x) == 0.0


def test_refused_int8_ships_the_fp32_bytes(teacher, digits_fed):
    fp32 = export_onnx(teacher, SHAPE, ExportConfig())
    result = quantize(
        fp32, digits_fed.server.public_pool, digits_fed.server.val, quant(tolerance=-1.0)
    )
    assert not result.quantized and result.model_bytes == fp32 and "disagrees" in result.reason


@pytest.mark.parametrize("quantized", [False, True])
def test_folded_device_model_on_raw_input_equals_the_model_on_preprocessed_input(
    teacher, digits_fed, quantized
):
    from fedge.compression.export import fold_device_ops

    model = export_onnx(teacher, SHAPE, ExportConfig())
    if quantized:
        model = quantize(
            model, digits_fed.server.public_pool, digits_fed.server.val, STATIC
        ).model_bytes
    x = digits_fed.server.test.x[:50]
    folded = fold_device_ops(model, digits_fed.dataset.preprocessing, check_x=x)
    logits, probabilities = make_session(model).run(None, {"input": x})
    folded_logits, folded_probabilities, labels = make_session(folded).run(None, {"input": x * 16})
    np.testing.assert_allclose(folded_probabilities, probabilities, atol=1e-6)
    assert np.array_equal(labels, logits.argmax(1))


def test_folding_check_catches_a_device_model_that_disagrees(teacher, student, digits_fed):
    from fedge.compression.export import _check_agreement, fold_device_ops

    prep = digits_fed.dataset.preprocessing
    x = digits_fed.server.test.x[:50]
    teacher_onnx = export_onnx(teacher, SHAPE, ExportConfig())
    other = fold_device_ops(export_onnx(student, SHAPE, ExportConfig()), prep, check_x=x)
    with pytest.raises(RuntimeError, match="disagrees"):
        _check_agreement(teacher_onnx, other, x, prep.invert(x), 1e-4)


def test_onnx_teacher_gives_the_torch_teachers_logits(teacher, digits_fed):
    import torch

    from fedge.compression.export import ExportConfig, export_onnx
    from fedge.compression.onnx_teacher import OnnxTeacher

    wrapped = OnnxTeacher(export_onnx(teacher, (1, 8, 8), ExportConfig()))
    x = torch.from_numpy(digits_fed.server.test.x[:64])
    with torch.no_grad():
        np.testing.assert_allclose(wrapped(x).numpy(), teacher(x).numpy(), atol=1e-4)


def test_a_model_onnxruntime_cannot_quantize_ships_fp32_with_the_reason(
    teacher, digits_fed, monkeypatch
):
    import fedge.compression.quantize as q

    def broken(*args, **kwargs):
        raise AssertionError("scale issue")

    fp32 = export_onnx(teacher, (1, 8, 8), ExportConfig())
    monkeypatch.setattr(q, "quantize_int8", broken)
    result = quantize(fp32, digits_fed.server.public_pool, digits_fed.server.val, STATIC)
    assert result.model_bytes == fp32 and not result.quantized
    assert "could not quantize (AssertionError: scale issue)" in result.reason


def _weight_scales(model_bytes: bytes) -> dict[str, tuple[int, ...]]:
    """Shape of each weight's int8 scale (per tensor: (); per channel: (out_channels,))."""
    proto = onnx.load_from_string(model_bytes)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {
        node.input[0]: inits[node.input[1]].shape
        for node in proto.graph.node
        if node.op_type == "DequantizeLinear"
        and inits.get(node.input[0]) is not None
        and inits[node.input[0]].ndim > 1
    }


def _activation_scales(model_bytes: bytes) -> list[float]:
    proto = onnx.load_from_string(model_bytes)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"]


def test_quantization_options_change_what_they_claim(teacher, digits_fed):
    from fedge.compression.quantize import quantize_int8

    fp32 = export_onnx(teacher, (1, 8, 8), ExportConfig())
    pool = digits_fed.server.public_pool
    per_channel = _weight_scales(quantize_int8(fp32, pool, quant(per_channel=True)))
    per_tensor = _weight_scales(quantize_int8(fp32, pool, quant(per_channel=False)))
    assert per_channel.keys() == per_tensor.keys() and len(per_channel) == 4
    assert all(shape == () for shape in per_tensor.values())
    assert all(len(shape) == 1 and shape[0] > 1 for shape in per_channel.values())

    minmax = _activation_scales(quantize_int8(fp32, pool, quant(calibration="minmax")))
    pct = _activation_scales(quantize_int8(fp32, pool, quant(calibration="percentile")))
    assert len(minmax) == len(pct) and minmax != pct

    dynamic = quantize_int8(fp32, pool, quant(mode="dynamic"))
    ops = {n.op_type for n in onnx.load_from_string(dynamic).graph.node}
    assert "MatMulInteger" in ops and "Conv" in ops  # fully connected layers int8, convs float
    assert not ops & {"QLinearConv", "ConvInteger", "QuantizeLinear"}
    assert len(dynamic) < len(fp32) / 2
    result = quantize(fp32, pool, digits_fed.server.val, quant(mode="dynamic"))
    assert result.int8_val_accuracy is not None
    assert result.int8_val_accuracy >= result.fp32_val_accuracy - 0.02
    none = quantize(fp32, pool, digits_fed.server.val, quant(mode="none"))
    assert none.model_bytes == fp32 and not none.quantized and "not requested" in none.reason


@pytest.mark.parametrize(("fast", "plain"), [("small-fast", "small"), ("medium-fast", "medium")])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 40)])
def test_fast_students_pool_before_the_second_convolution(fast, plain, shape):
    """Same weights as the plain layout, but the second convolution sees half the length
    (a quarter of the pixels), so it costs proportionally fewer multiply-adds."""
    fast_model, plain_model = build_student(shape, 10, fast, 0), build_student(shape, 10, plain, 0)
    assert count_params(fast_model) == count_params(plain_model)
    kinds = [type(layer).__name__ for layer in fast_model.features]
    assert kinds[2].startswith("MaxPool") and not kinds[-1].startswith("MaxPool")
    x = torch.zeros(2, *shape)
    seen = {}

    def spy(name):
        def hook(module, inputs, output):
            seen[name] = inputs[0].shape[2:]

        return hook

    fast_model.features[3].register_forward_hook(spy("fast"))  # conv, pool, relu, conv
    plain_model.features[2].register_forward_hook(spy("plain"))  # conv, relu, conv
    assert fast_model(x).shape == plain_model(x).shape == (2, 10)
    assert np.prod(seen["fast"]) * 2 ** (len(shape) - 1) == np.prod(seen["plain"])


def test_magnitude_sparsity_shrinks_the_gzip_size_not_the_raw_file(teacher, student, digits_fed):
    from fedge.core.io import gzip_size

    pool = digits_fed.server.public_pool
    dense = prune(
        student,
        teacher,
        pool,
        PruneConfig(ratio=0.0, sparsity=0.0, finetune_epochs=0, kd=KD),
        input_shape=SHAPE,
    )
    sparse = prune(
        student,
        teacher,
        pool,
        PruneConfig(ratio=0.0, sparsity=0.6, finetune_epochs=3, kd=KD),
        input_shape=SHAPE,
    )
    weights = [
        m.weight for m in sparse.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros >= 0.6 and not any(hasattr(m, "weight_mask") for m in sparse.modules())
    dense_onnx, sparse_onnx = (export_onnx(m, SHAPE, ExportConfig()) for m in (dense, sparse))
    assert abs(len(sparse_onnx) - len(dense_onnx)) < 0.01 * len(dense_onnx)
    assert gzip_size(sparse_onnx) < 0.75 * gzip_size(dense_onnx)
    assert evaluate(sparse, digits_fed.server.test.x, digits_fed.server.test.y)[1] > 0.8
