"""The `tflite` device target: LiteRT and TensorFlow Lite Micro against the ONNX student."""

import builtins
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from fedge.cli import app
from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.compression.quantize import quantize_int8
from fedge.compression.targets import TargetError
from fedge.compression.tflite import EXTRA_HINT, tflite_report, to_tflite
from fedge.compression.weights import weight_only_int8
from fedge.core.data import Preprocessing
from fedge.core.litert import (
    LiteRtError,
    litert_logits,
    softmax,
    tflm_arena,
    tflm_logits,
    tflm_min_arena,
)
from fedge.core.models import build_student
from fedge.core.ort import make_session
from fedge.core.tflite_plan import planned_arena
from tests.compression.configs import SHAPE, STATIC

pytest.importorskip("tensorflow", reason="the tflite target needs the litert extra")


def device_model(student: str, shape: tuple[int, ...]) -> bytes:
    """An untrained family member as fedge ships it: raw input, per-channel preprocessing."""
    model = build_student(shape, 10, student, seed=0)
    channels = shape[0] if len(shape) > 1 else 1
    stat = tuple(0.5 + 0.1 * c for c in range(channels)) if len(shape) > 1 else 0.3
    scale = tuple(2.0 - 0.2 * c for c in range(channels)) if len(shape) > 1 else 1.5
    prep = Preprocessing(shift=stat, scale=scale, input_shape=shape)
    fp32 = export_onnx(model, shape, ExportConfig())
    return fold_device_ops(fp32, prep, np.zeros((2, *shape), np.float32))


def onnx_logits(model: bytes, x: np.ndarray) -> np.ndarray:
    return make_session(model).run(["logits"], {"input": x})[0]


def raw_test(fed) -> np.ndarray:
    return fed.raw_server.x_test.reshape(-1, *SHAPE).astype(np.float32)


def raw_public(fed) -> np.ndarray:
    return fed.dataset.preprocessing.invert(fed.server.public_pool.x)[:256]


@pytest.mark.parametrize(
    ("student", "shape"),
    [
        ("deep-small", (1, 8, 8)),  # the default student: ceil-mode pooling on odd sizes
        ("ds-small", (1, 28, 28)),  # depthwise-separable, fmnist's shape
        ("small", (3, 12, 10)),  # three channels: the layout moves and per-channel constants
        ("deep-tiny", (1, 40)),  # 1-D convolutions and pooling (MNIST-1D)
        ("arch:c8k3p-d16k5p-h32-hardswish", (1, 28, 28)),  # hard-swish, a hidden layer
        ("arch:c8k3s-d16k3sp-d16k3p-relu", (1, 27, 27)),  # strides, odd sizes (SAME padding)
        ("arch:c8k5s-relu", (1, 40)),  # a strided 1-D convolution
        ("small", (20,)),  # an MLP on flat features
    ],
)
def test_float_tflite_computes_the_onnx_logits(student, shape):
    model = device_model(student, shape)
    x = np.random.default_rng(0).uniform(0, 2, (16, *shape)).astype(np.float32)
    artifact = to_tflite(model, None)
    assert not artifact.int8 and artifact.input_shape == (1, *shape)
    np.testing.assert_allclose(
        litert_logits(artifact.tflite_bytes, x), onnx_logits(model, x), atol=1e-5
    )


@pytest.fixture(scope="module")
def int8_tflite(shipped, digits_fed) -> bytes:
    return to_tflite(shipped, raw_public(digits_fed)).tflite_bytes


def test_int8_tflite_agrees_with_the_shipped_onnx_on_the_test_split(
    shipped, int8_tflite, digits_fed
):
    x, y = raw_test(digits_fed), digits_fed.raw_server.y_test
    want = onnx_logits(shipped, x).argmax(axis=1)
    got = litert_logits(int8_tflite, x).argmax(axis=1)
    assert (got == want).mean() >= 0.99
    assert abs((got == y).mean() - (want == y).mean()) <= 0.01


def test_int8_tflite_has_no_float_tensor(int8_tflite):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=int8_tflite)
    kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.float32 not in kinds
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8


def test_weight_only_int8_models_convert_too(digits_fed):
    model = weight_only_int8(device_model("ds-small", SHAPE))
    x = raw_test(digits_fed)[:100]
    got = litert_logits(to_tflite(model, None).tflite_bytes, x)
    np.testing.assert_allclose(got, onnx_logits(model, x), atol=1e-4)


def test_the_same_inputs_give_the_same_bytes(shipped, int8_tflite, digits_fed):
    assert to_tflite(shipped, raw_public(digits_fed)).tflite_bytes == int8_tflite


def test_tflm_runs_it_in_the_arena_fedge_plans(int8_tflite, digits_fed):
    x = raw_test(digits_fed)
    arena = tflm_arena(int8_tflite)
    assert arena.head == planned_arena(int8_tflite)  # activations: the planner's peak
    assert arena.total == arena.head + arena.tail
    smallest = tflm_min_arena(int8_tflite)
    # the reported total is rounded up to 16 bytes; the planner's scratch adds at most 1 kB
    assert arena.total - 16 < smallest <= arena.total + 1024
    micro = tflm_logits(int8_tflite, x, smallest).argmax(axis=1)
    assert (micro == litert_logits(int8_tflite, x).argmax(axis=1)).mean() >= 0.99
    with pytest.raises(LiteRtError, match=r"cannot allocate the model in a \d+-byte arena"):
        tflm_logits(int8_tflite, x, smallest - 16)


def test_the_report_measures_flash_arena_and_agreement(shipped, digits_fed):
    samples = raw_public(digits_fed)
    artifact = to_tflite(shipped, samples)
    report = tflite_report(artifact, onnx_logits(shipped, samples).argmax(axis=1), samples)
    assert report.flash_bytes == len(artifact.tflite_bytes)
    assert report.tflm_arena is not None
    assert report.planned_arena_bytes == report.tflm_arena.head
    assert 0.99 <= report.agreement <= 1.0 and report.samples == len(samples)
    assert f"{report.flash_bytes} bytes flash" in report.summary()


def _graph(op: str, **attrs: object) -> bytes:
    node = helper.make_node(op, ["input"], ["logits"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (b"not onnx at all", "not an ONNX model"),
        (_graph("Sin"), "unsupported ONNX op Sin"),
        (_graph("Relu"), None),  # supported: converts
    ],
)
def test_models_it_cannot_convert_are_one_line_errors(model, why):
    if why is None:
        assert to_tflite(model, None).input_shape == (1, 4)
        return
    with pytest.raises(TargetError, match=why) as caught:
        to_tflite(model, None)
    assert "\n" not in str(caught.value)


def test_grouped_convolutions_that_are_not_depthwise_are_refused():
    model = onnx.load_from_string(device_model("small", (4, 8, 8)))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    weight = next(i for i in model.graph.initializer if i.name == conv.input[1])
    array = onnx.numpy_helper.to_array(weight)[:, :2]  # 4 input channels in 2 groups of 2
    weight.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(array), weight.name))
    conv.attribute.append(helper.make_attribute("group", 2))
    with pytest.raises(TargetError, match="group 2 is neither 1 nor depthwise"):
        to_tflite(model.SerializeToString(), None)


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros((4, 1, 9, 9), np.float32), r"calibration samples have shape \(1, 9, 9\)"),
        (np.zeros((0, 1, 8, 8), np.float32), "calibration holds no samples"),
        (np.full((4, 1, 8, 8), np.nan, np.float32), "calibration samples hold NaN or Inf"),
        (np.full((4, 1, 8, 8), 1e39), "calibration samples hold NaN or Inf"),  # inf as float32
        (np.ones((4, 1, 8, 8), bool), "calibration samples must be real numbers, got dtype bool"),
    ],
)
def test_calibration_that_cannot_calibrate_is_refused(shipped, samples, message):
    # before TensorFlow sees it: empty samples crashed it, NaN blamed the model's scales
    with pytest.raises(TargetError, match=message):
        to_tflite(shipped, samples)


def test_without_tensorflow_the_error_names_the_extra(shipped, monkeypatch):
    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name == "tensorflow":
            raise ImportError("No module named 'tensorflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    with pytest.raises(TargetError, match=r"pip install -e '\.\[litert\]'") as caught:
        to_tflite(shipped, None)
    assert str(caught.value) == EXTRA_HINT


def target_tflite(*args: object):
    return CliRunner().invoke(app, ["target", "tflite", *map(str, args)])


@pytest.fixture()
def calibration(tmp_path, digits_fed) -> Path:
    path = tmp_path / "calibration.npz"
    np.savez(path, x=raw_public(digits_fed))
    return path


def test_cli_writes_the_tflite_of_a_verified_bundle(signed_bundle, calibration, tmp_path, shipped):
    bundle, key = signed_bundle
    out = tmp_path / "model.tflite"
    result = target_tflite(bundle, "--trusted-key", key, "--calibration", calibration, "--out", out)
    assert result.exit_code == 0, result.output
    assert "bytes flash" in result.output and "TFLM arena" in result.output
    x = np.load(calibration)["x"]
    agree = litert_logits(out.read_bytes(), x).argmax(1) == onnx_logits(shipped, x).argmax(1)
    assert agree.mean() >= 0.99


def test_cli_writes_nothing_below_the_agreement_asked_for(signed_bundle, calibration, tmp_path):
    bundle, key = signed_bundle
    out = tmp_path / "model.tflite"
    args = ["--trusted-key", key, "--calibration", calibration, "--out", out]
    x = np.load(calibration)["x"]
    np.savez(calibration, x=np.concatenate([x, x[:1] * 0 + 1e3]))  # one sample far off-range
    result = target_tflite(bundle, *args, "--min-agreement", 1.0)
    assert result.exit_code == 2, result.output
    assert "nothing written" in result.output and not out.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--min-agreement": "1.5"}, "--min-agreement 1.5 is outside [0, 1]"),
        ({"--calibration": "missing.npz"}, "npz file not found"),
        ({"--calibration": "noarray"}, "lacks arrays x"),
        ({"--calibration": "shape"}, "calibration samples have shape (3,)"),
    ],
)
def test_cli_bad_input_is_one_line_and_writes_nothing(
    signed_bundle, calibration, tmp_path, change, message
):
    bundle, key = signed_bundle
    out = tmp_path / "model.tflite"
    options = {"--trusted-key": key, "--calibration": calibration, "--out": out}
    if change.get("--calibration") == "noarray":
        np.savez(calibration, y=np.zeros(3))
        change = {}
    elif change.get("--calibration") == "shape":
        np.savez(calibration, x=np.zeros((4, 3), np.float32))
        change = {}
    elif "--calibration" in change:
        change = {"--calibration": tmp_path / change["--calibration"]}
    options.update(change)
    result = target_tflite(bundle, *[v for kv in options.items() for v in kv])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".model.tflite-*"))


def test_the_refusal_lists_exactly_the_ops_it_maps():
    from fedge.compression.tflite_ops import SUPPORTED, Ops

    handlers = {name for name in vars(Ops) if name.startswith("_") and not name.startswith("__")}
    assert {f"_{op.lower()}" for op in SUPPORTED} == handlers - {"_binary", "_clamp", "_pool"}


@pytest.mark.parametrize(
    ("student", "shape"),
    [("medium-fast", (1, 40)), ("ds-small", (1, 40)), ("small", (3, 12, 10))],
)
def test_the_planned_arena_is_tflms_also_where_the_arena_fragments(student, shape):
    # medium-fast on 40 samples: the greedy planner leaves a gap, 1,600 bytes against 1,280
    # live at most; a peak-of-live-bytes planner would predict 20 % too little.
    calibration = np.random.default_rng(0).uniform(0, 1, (32, *shape)).astype(np.float32)
    model = to_tflite(device_model(student, shape), calibration).tflite_bytes
    assert planned_arena(model) == tflm_arena(model).head


# The device side: a node that runs tflite installs, checks and serves the bundle's artifact.


@pytest.fixture()
def tflite_bundle(tmp_path, shipped, int8_tflite) -> tuple[Path, Path]:
    """A bundle directory carrying model.tflite beside model.onnx, and its public key."""
    from fedge.compression.bundle import generate_keypair, load_private_key, make_bundle
    from tests.client.conftest import bundle_config

    private, public = generate_keypair(tmp_path / "tflite-keys")
    files = make_bundle(
        shipped,
        bundle_config(),
        load_private_key(private),
        {"tflite": (int8_tflite, (1, *SHAPE))},
    )
    bundle = tmp_path / "tflite-bundle"
    bundle.mkdir()
    for name, data in files.items():
        (bundle / name).write_bytes(data)
    return bundle, public


def device(*args: object):
    return CliRunner().invoke(app, [*map(str, args)])


def test_a_tflite_node_installs_checks_and_serves_the_artifact(
    tflite_bundle, tmp_path, int8_tflite, digits_fed
):
    bundle, key = tflite_bundle
    store = tmp_path / "store"
    common = ["--model-dir", store, "--trusted-key", key, "--runtime", "tflite"]
    installed = device("install", bundle, *common)
    assert installed.exit_code == 0, installed.output
    x = raw_test(digits_fed)[:50]
    np.save(tmp_path / "x.npy", x)
    result = device("infer", tmp_path / "x.npy", *common, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    logits = litert_logits(int8_tflite, x)
    assert answer["labels"] == logits.argmax(axis=1).tolist()
    np.testing.assert_allclose(answer["probabilities"], softmax(logits), atol=1e-5)


def test_the_session_gives_the_device_contract(int8_tflite, shipped, digits_fed):
    from fedge.core.litert import LiteRtSession

    session = LiteRtSession(int8_tflite, "input", "probabilities", "label")
    assert [o.name for o in session.get_outputs()] == ["probabilities", "label"]
    assert session.get_inputs()[0].shape == ["batch", *SHAPE]
    x = raw_test(digits_fed)[:20]
    probabilities, label = session.run(None, {"input": x})
    assert probabilities.dtype == np.float32 and probabilities.shape == (20, 10)
    assert label.dtype == np.int64 and (label == probabilities.argmax(axis=1)).all()
    with pytest.raises(LiteRtError, match="the model's one input is 'input'"):
        session.run(None, {"x": x})
    with pytest.raises(LiteRtError, match=r"input shape \(1, 9, 9\) is not \(1, 8, 8\)"):
        session.run(None, {"input": np.zeros((1, 1, 9, 9), np.float32)})


def test_a_tflite_node_refuses_a_bundle_without_its_artifact(signed_bundle, tmp_path):
    bundle, key = signed_bundle
    store = tmp_path / "store"
    result = device(
        "install", bundle, "--model-dir", store, "--trusted-key", key, "--runtime", "tflite"
    )
    assert result.exit_code == 2
    assert "runtime check failed: the bundle has no tflite artifact (it has: onnx)" in result.output
    from fedge.client.runtime.store import ModelStore

    assert ModelStore(store).current_version() is None


def test_a_tflite_node_refuses_an_artifact_litert_cannot_load(tmp_path, shipped):
    from fedge.client.runtime.store import ModelStore
    from fedge.client.runtime.verify import BundleError, load_public_key
    from fedge.compression.bundle import generate_keypair, load_private_key, make_bundle
    from tests.client.conftest import bundle_config

    private, public = generate_keypair(tmp_path / "keys2")
    garbage = b"\x00\x00\x00\x00TFL3" + b"\xff" * 200  # signed, marked, but not a flatbuffer
    files = make_bundle(
        shipped, bundle_config(), load_private_key(private), {"tflite": (garbage, (1, *SHAPE))}
    )
    store = ModelStore(tmp_path / "store")
    with pytest.raises(BundleError, match="device-model check failed: LiteRT cannot load"):
        store.install(files, load_public_key(public), runtime="tflite")
    assert store.current_version() is None
    store.install(files, load_public_key(public))  # an onnx node takes the same bundle


@pytest.mark.parametrize("command", ["install", "infer", "serve"])
def test_an_unknown_runtime_is_one_line(tflite_bundle, tmp_path, command):
    bundle, key = tflite_bundle
    first = [bundle] if command == "install" else ["x.npy"] if command == "infer" else []
    result = device(
        command, *first, "--model-dir", tmp_path, "--trusted-key", key, "--runtime", "coreml"
    )
    assert result.exit_code == 2
    assert "--runtime 'coreml' is not a runtime; allowed: onnx, ort, tflite" in result.output


def test_the_logits_range_starts_just_below_the_lowest_top_logit(
    shipped, shipped_weights, digits_fed
):
    from ai_edge_litert.interpreter import Interpreter

    from fedge.compression.tflite import LOGIT_MARGIN, narrow_logits

    def output_floor(model: bytes) -> float:
        scale, zero = Interpreter(model_content=model).get_output_details()[0]["quantization"]
        return (-128 - zero) * scale

    samples = raw_public(digits_fed)
    model = to_tflite(shipped_weights, samples).tflite_bytes
    top = onnx_logits(shipped_weights, samples).max(axis=1).min()
    assert output_floor(model) == pytest.approx(top - LOGIT_MARGIN, abs=0.05)
    assert narrow_logits(model, top - LOGIT_MARGIN) == model  # already there: unchanged
    assert narrow_logits(model, 1.0) == model  # a floor above zero would drop 0: refused
    # A static (QDQ) model's logits keep the model's own grid: nothing narrows them.
    static = to_tflite(shipped, samples).tflite_bytes
    scale, zero = Interpreter(model_content=static).get_output_details()[0]["quantization"]
    assert (scale, zero) == pytest.approx(onnx_grid(shipped, "logits"))


def onnx_grid(model: bytes, tensor: str) -> tuple[float, int]:
    """Scale and zero point of the DequantizeLinear that writes `tensor` in an ONNX model."""
    graph = onnx.load_from_string(model).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    node = next(n for n in graph.node if tensor in n.output and n.op_type == "DequantizeLinear")
    return float(consts[node.input[1]]), int(consts[node.input[2]])


def test_a_static_model_becomes_the_same_integer_model(shipped, int8_tflite, digits_fed):
    # Every activation's QDQ grid is the converter's: fake quantization, not calibration, sets
    # it, so LiteRT's labels are onnxruntime's own on the whole test split (the weight-only
    # model, whose activations the converter calibrates, agrees on >= 99 % only).
    x = raw_test(digits_fed)
    want = onnx_logits(shipped, x)
    got = litert_logits(int8_tflite, x)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    assert np.abs(got - want).max() <= 1.01 * onnx_grid(shipped, "logits")[0]  # one step


def test_a_tflite_node_without_litert_refuses_and_keeps_what_it_serves(
    tflite_bundle, tmp_path, monkeypatch
):
    from fedge.client.runtime.predictor import Predictor
    from fedge.client.runtime.store import ModelStore
    from fedge.client.runtime.verify import BundleError, load_public_key, read_bundle_dir

    bundle, key = tflite_bundle
    store = ModelStore(tmp_path / "store")
    store.install(read_bundle_dir(bundle), load_public_key(key))  # as an onnx node
    real_import = builtins.__import__

    def no_litert(name, *args, **kwargs):
        if name.startswith("ai_edge_litert"):
            raise ImportError("No module named 'ai_edge_litert'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_litert)
    with pytest.raises(BundleError, match=r"needs ai-edge-litert: pip install ai-edge-litert"):
        Predictor(tmp_path / "store", key, runtime="tflite")
    assert Predictor(tmp_path / "store", key, warmup=0).version == 1  # onnx still serves


@pytest.mark.parametrize("quant", ["static", "weights"])
def test_int8_logits_stay_close_to_the_onnx_logits(quant, shipped, shipped_weights, digits_fed):
    # static: the logits come out of a QDQ clip (MINIMUM/MAXIMUM ops copy int8 values), so
    # their range must not be narrowed; weights: a fully connected layer writes them.
    model = shipped if quant == "static" else shipped_weights
    samples, x = raw_public(digits_fed), raw_test(digits_fed)
    want = onnx_logits(model, x)
    got = litert_logits(to_tflite(model, samples).tflite_bytes, x)
    near = want > want.max(axis=1, keepdims=True) - 4  # what decides label and probabilities
    error = np.abs(got - want)[near].max()
    assert error < 0.05 * (want.max() - want.min()), error


def test_concurrent_runs_each_get_their_own_answer(int8_tflite, digits_fed):
    import threading

    from fedge.core.litert import LiteRtSession

    session = LiteRtSession(int8_tflite, "input", "probabilities", "label")
    x = raw_test(digits_fed)[:64]
    want = [session.run(None, {"input": x[i : i + 16]})[1] for i in range(0, 64, 16)]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(20):
            got[i] = session.run(None, {"input": x[16 * i : 16 * i + 16]})[1]
            assert (got[i] == want[i]).all()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all((got[i] == want[i]).all() for i in range(4))


def test_the_same_version_with_the_artifact_completes_a_copy_sent_without_it(
    tflite_bundle, tmp_path
):
    from fedge.client.runtime.store import ModelStore
    from fedge.client.runtime.verify import load_public_key, read_bundle_dir

    bundle, key = tflite_bundle
    files = read_bundle_dir(bundle)
    store, public = ModelStore(tmp_path / "store"), load_public_key(key)
    store.install({k: v for k, v in files.items() if k != "model.tflite"}, public)  # onnx copy
    assert store.load(public).artifacts == {}
    again = store.install(files, public, runtime="tflite")
    assert again.changed and store.load(public).artifacts == {"tflite": files["model.tflite"]}
    assert not store.install(files, public, runtime="tflite").changed  # now it is there


def test_the_preprocessing_rounds_once_as_in_onnxruntime():
    # fmnist's case: raw pixels 0..255, (x - 72.94) x 0.0111 folded in front of a static int8
    # student. As Mul then Add the converter gave the product a grid of its own and rounded
    # twice; as one depthwise 1x1 op the first layer's int8 input is onnxruntime's, so an
    # untrained student's labels agree everywhere and its logits within one int8 step.
    from fedge.core.partition import PublicPool

    shape = (1, 28, 28)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (300, *shape)).astype(np.float32)
    prep = Preprocessing(shift=72.94, scale=0.0111, input_shape=shape)
    student = build_student(shape, 10, "ds-tiny", seed=0)
    int8 = quantize_int8(
        export_onnx(student, shape, ExportConfig()), PublicPool(x=prep.apply(raw)), STATIC
    )
    model = fold_device_ops(int8, prep, prep.apply(raw[:2]))
    want = onnx_logits(model, raw)
    got = litert_logits(to_tflite(model, raw).tflite_bytes, raw)
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    assert np.abs(got - want).max() <= 1.01 * onnx_grid(model, "logits")[0]


def test_a_per_value_input_shift_is_refused_by_name_not_converted_wrongly():
    shape = (1, 8, 8)
    model = build_student(shape, 10, "deep-small", seed=0)
    shift = tuple(float(v) for v in np.linspace(0.0, 1.0, 64))  # center-inputs public
    prep = Preprocessing(shift=shift, scale=0.5, input_shape=shape)
    folded = fold_device_ops(
        export_onnx(model, shape, ExportConfig()), prep, np.zeros((2, *shape), np.float32)
    )
    with pytest.raises(TargetError, match="64 values for 1 channels.*center-inputs public"):
        to_tflite(folded, None)
