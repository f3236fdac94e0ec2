"""The `ort` device target: the .ort against the shipped ONNX, onnxruntime's checker and converter."""

import contextlib
import io
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from fedge.cli import app
from fedge.compression.targets import TargetError, fix_batch, nnapi_verdict, ort_artifact
from fedge.core.ort import make_session
from tests.compression.configs import SHAPE


@pytest.fixture(scope="module")
def artifact(shipped):
    return ort_artifact(shipped)


def raw_test(fed) -> np.ndarray:
    """The test split's raw samples, shaped as the predictor feeds them (no preprocessing)."""
    return fed.raw_server.x_test.reshape(-1, *SHAPE).astype(np.float32)


def outputs_at_batch_1(session: ort.InferenceSession, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Probabilities and labels, one sample per run (the only batch the .ort takes)."""
    runs = [session.run(["probabilities", "label"], {"input": x[i : i + 1]}) for i in range(len(x))]
    return np.concatenate([r[0] for r in runs]), np.concatenate([r[1] for r in runs])


def test_ort_gives_the_onnx_probabilities_and_labels_on_the_test_split(
    shipped, artifact, digits_fed
):
    x = raw_test(digits_fed)
    want_p, want_labels = outputs_at_batch_1(make_session(shipped), x)
    replay = ort.SessionOptions()  # what ORT Mobile does with the saved runtime optimizations
    replay.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    for options in (None, replay):
        session = ort.InferenceSession(artifact.ort_bytes, options, ["CPUExecutionProvider"])
        got_p, got_labels = outputs_at_batch_1(session, x)
        np.testing.assert_allclose(got_p, want_p, rtol=0, atol=1e-6)
        assert np.array_equal(got_labels, want_labels)
    assert np.mean(want_labels == digits_fed.raw_server.y_test) > 0.9  # a trained student


def test_the_named_batch_axis_is_fixed_to_one_everywhere(shipped, artifact):
    (source_input,) = onnx.load_from_string(shipped).graph.input
    assert source_input.type.tensor_type.shape.dim[0].dim_param == "batch"  # fedge names it
    assert artifact.input_name == "input" and artifact.input_shape == (1, *SHAPE)
    fixed = onnx.load_from_string(artifact.fixed_onnx).graph
    for value in [*fixed.input, *fixed.output]:
        assert value.type.tensor_type.shape.dim[0].dim_value == 1, value.name
    session = ort.InferenceSession(artifact.ort_bytes, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, *SHAPE]
    with pytest.raises(Exception, match="[Ii]nvalid dimensions|Got: 2"):
        session.run(None, {"input": np.zeros((2, *SHAPE), np.float32)})


def test_nnapi_as_is_yes_once_fixed_and_no_while_dynamic(shipped, artifact):
    dynamic = nnapi_verdict(shipped)
    assert dynamic.suitability == "NO" and not dynamic.as_is
    fixed = artifact.nnapi
    assert artifact.nnapi_as_is and fixed.suitability == "YES"
    # One partition; only ArgMax (the label) stays on the CPU.
    assert (fixed.partitions, fixed.supported_nodes) == (1, fixed.nodes - 1)
    assert dynamic.supported_nodes < fixed.supported_nodes


def test_verdicts_are_what_onnxruntimes_checker_reports(shipped, artifact, tmp_path):
    from onnxruntime.tools.mobile_helpers.usability_checker import analyze_model

    for name, model, ours in (
        ("dynamic", shipped, nnapi_verdict(shipped)),
        ("fixed", artifact.fixed_onnx, artifact.nnapi),
    ):
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(model)
        lines = _Lines()
        logger = logging.getLogger(f"test-checker-{name}")
        logger.setLevel(logging.INFO)
        logger.addHandler(lines)
        analyze_model(path, logger=logger)
        logger.removeHandler(lines)
        prefix = "Model should perform well with NNAPI as is: "
        (said,) = [line[len(prefix) :] for line in lines.messages if line.startswith(prefix)]
        assert said == ours.suitability, name


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_conversion_matches_onnxruntimes_converter(artifact, digits_fed, tmp_path):
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    source = tmp_path / "fixed.onnx"
    source.write_bytes(artifact.fixed_onnx)
    with contextlib.redirect_stdout(io.StringIO()):
        convert_onnx_models_to_ort(
            source, tmp_path / "out", [OptimizationStyle.Runtime], target_platform="arm"
        )
    theirs = (tmp_path / "out" / "fixed.with_runtime_opt.ort").read_bytes()
    assert len(theirs) == len(artifact.ort_bytes)  # same tables (their order varies per run)
    x = raw_test(digits_fed)[:40]
    ours_out = outputs_at_batch_1(make_session(artifact.ort_bytes), x)
    theirs_out = outputs_at_batch_1(make_session(theirs), x)
    for a, b in zip(ours_out, theirs_out, strict=True):
        assert np.array_equal(a, b)


def _model(input_dims: list[list[int | str]]) -> bytes:
    inputs = [
        helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, dims)
        for i, dims in enumerate(input_dims)
    ]
    nodes = [helper.make_node("Identity", ["x0"], ["y"])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, input_dims[0])
    graph = helper.make_graph(nodes, "g", inputs, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (b"\x08\x07not onnx at all", "not an ONNX model|no graph"),
        (_model([["batch", 4], ["batch", 4]]), "has 2 inputs; expected one"),
        (_model([["batch", "width"]]), "only the batch axis may be dynamic"),
        (_model([[4, 3]]), "fixed batch of 4"),
        (_model([["batch"]]), "rank 1"),
    ],
)
def test_models_it_cannot_target_are_one_line_errors(model, why):
    with pytest.raises(TargetError, match=why) as caught:
        ort_artifact(model)
    assert "\n" not in str(caught.value)


def test_a_fixed_batch_of_one_is_kept():
    fixed, name, shape = fix_batch(_model([[1, 4]]))
    assert (name, shape) == ("x0", (1, 4))
    assert ort_artifact(fixed).input_shape == (1, 4)


def target_ort(*args: object):
    return CliRunner().invoke(app, ["target", "ort", *map(str, args)])


def test_cli_writes_the_ort_of_a_verified_bundle(signed_bundle, tmp_path, shipped):
    bundle, key = signed_bundle
    out = tmp_path / "model.ort"
    result = target_ort(bundle, "--trusted-key", key, "--out", out)
    assert result.exit_code == 0, result.output
    assert "NNAPI as is: YES" in result.output
    x = np.zeros((1, *SHAPE), np.float32)
    session = ort.InferenceSession(out.read_bytes(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(None, {"input": x})[1],
        make_session(shipped).run(None, {"input": x})[1],
        atol=1e-6,
    )
    again = target_ort(bundle, "--trusted-key", key, "--out", out)
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    assert target_ort(bundle, "--trusted-key", key, "--out", out, "--force").exit_code == 0


@pytest.mark.parametrize("tamper", ["weight", "manifest"])
def test_cli_refuses_a_tampered_bundle_and_writes_nothing(signed_bundle, tmp_path, tamper):
    bundle, key = signed_bundle
    name = "model.onnx" if tamper == "weight" else "manifest.json"
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit: in a weight, or in the signed manifest
    (bundle / name).write_bytes(bytes(data))
    out = tmp_path / "model.ort"
    result = target_ort(bundle, "--trusted-key", key, "--out", out)
    assert result.exit_code == 2
    assert ("sha256 check failed" if tamper == "weight" else "check failed") in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".model.ort-*"))


def test_an_ort_node_installs_checks_and_serves_the_signed_ort(tmp_path, shipped, digits_fed):
    from fedge.compression.bundle import generate_keypair, load_private_key, make_bundle
    from fedge.core.ort import BatchOne, ort_format_session
    from tests.client.conftest import bundle_config

    artifact = ort_artifact(shipped)
    private, public = generate_keypair(tmp_path / "keys")
    files = make_bundle(
        shipped,
        bundle_config(),
        load_private_key(private),
        {"ort": (artifact.ort_bytes, (1, *SHAPE))},
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name, data in files.items():
        (bundle / name).write_bytes(data)
    common = ["--model-dir", tmp_path / "store", "--trusted-key", public, "--runtime", "ort"]
    runner = CliRunner()
    installed = runner.invoke(app, ["install", str(bundle), *map(str, common)])
    assert installed.exit_code == 0, installed.output
    x = raw_test(digits_fed)[:40]
    np.save(tmp_path / "x.npy", x)
    result = runner.invoke(app, ["infer", str(tmp_path / "x.npy"), *map(str, common), "--json"])
    assert result.exit_code == 0, result.output
    session = BatchOne(ort_format_session(artifact.ort_bytes))
    probabilities, labels = session.run(["probabilities", "label"], {"input": x})
    answer = json.loads(result.output)
    assert answer["labels"] == labels.tolist()
    np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-6)
    empty = session.run(["probabilities", "label"], {"input": x[:0]})
    assert empty[0].shape == (0, 10) and empty[1].shape == (0,)
