"""`fedge infer` inputs in-process: hostile files get one-line errors (exit 2), big ones go in parts."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.client.runtime.inputs import MAX_JSON_BYTES, from_json, read_input_parts
from fedge.client.runtime.predictor import InputError, Predictor
from fedge.core.data import load_dataset

RAW = load_dataset("digits").x[:64]


def _infer(device, source: str, *args: str, stdin: str | None = None):
    runner = CliRunner()
    return runner.invoke(
        app,
        [
            "infer",
            source,
            "--model-dir",
            str(device.store),
            "--trusted-key",
            str(device.public_key),
            *args,
        ],
        input=stdin,
    )


def _npy_header(path, shape, dtype="<f4") -> None:
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)


def _refused(result, message: str) -> None:
    """Exit 2 with an error naming the problem (rich wraps it at 80 columns off a terminal)."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert text.startswith("error: ") and message in text, text
    assert "Traceback" not in text and result.stdout_bytes == b""


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.npy", b"", "is not a valid .npy file"),
        ("text.npy", b"hello", "is not a valid .npy file"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nests arrays or objects too deeply"),
        ("huge.json", b"[[" + b"1" + b"0" * 400 + b"]]", "input holds NaN or Inf"),
        ("big.json", b"[[1e400]]", "input holds NaN or Inf"),
        ("nan.json", b"[[NaN]]", "NaN is not a number"),
        ("ragged.json", b"[[1, 2], [3]]", "equal-length lists of numbers"),
        ("strings.json", b'[["a"]]', '"a" (a string) is not a number'),
        ("bad.json", b"\xff\xfe{", "is not JSON"),
        ("empty.csv", b"", "holds no samples"),
        ("letters.csv", b"a,b\n", "cannot read"),
        ("long.csv", b"1," * 10_000, "line 1 is longer than"),
    ],
)
def test_a_hostile_input_file_is_a_one_line_error(device, tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    _refused(_infer(device, str(tmp_path / name)), message)


def test_float64_beyond_float32_is_one_line_without_numpys_overflow_warning(device, tmp_path):
    import warnings

    np.save(tmp_path / "big.npy", np.full((2, 64), 1e300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's RuntimeWarning printed a second line
        _refused(_infer(device, str(tmp_path / "big.npy")), "float32's +-3.4e38 becomes Inf")


def test_a_npy_header_claiming_1e11_values_is_refused_before_allocating(device, tmp_path):
    _npy_header(tmp_path / "liar.npy", (100_000_000_000,))
    _refused(
        _infer(device, str(tmp_path / "liar.npy")), "the header declares shape (100000000000,)"
    )
    _npy_header(tmp_path / "rows.npy", (10**9, 64))
    _refused(_infer(device, str(tmp_path / "rows.npy")), "the file has 0 bytes of data")


def test_a_pickled_npy_is_refused(device, tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)  # noqa
    _refused(_infer(device, str(tmp_path / "objects.npy")), "holds object values")


def test_a_single_sample_of_the_wrong_size_is_refused_unread(device, tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(65, np.float32))
    _refused(_infer(device, str(tmp_path / "flat.npy")), "does not fit")


def test_oversized_json_on_stdin_is_refused(device):
    result = _infer(device, "-", stdin=" " * (MAX_JSON_BYTES + 1))
    _refused(result, "use a .npy or .csv file")


@pytest.mark.parametrize("order", ["C", "F"])
def test_files_are_read_in_parts_and_predicted_the_same(device, tmp_path, order):
    x = np.asfortranarray(RAW) if order == "F" else RAW
    np.save(tmp_path / "x.npy", x)
    np.savetxt(tmp_path / "x.csv", RAW, delimiter=",")
    parts = list(read_input_parts(str(tmp_path / "x.npy"), 64, rows=10))
    assert [len(p) for p in parts] == [10] * 6 + [4]
    expected = Predictor(device.store, device.public_key).predict(RAW).labels.tolist()
    for source in ("x.npy", "x.csv"):
        result = _infer(device, str(tmp_path / source), "--batch-size", "7", "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["labels"] == expected
    assert _infer(device, str(tmp_path / "x.csv")).stdout.split() == [str(v) for v in expected]


def test_read_input_parts_names_the_problem():
    with pytest.raises(InputError, match="input file not found"):
        list(read_input_parts("/nonexistent/x.npy", 64))


def test_a_json_batch_on_stdin_is_predicted(device):
    result = _infer(device, "-", stdin=json.dumps({"inputs": RAW[:2].tolist()}))
    assert result.exit_code == 0, result.output
    expected = Predictor(device.store, device.public_key).predict(RAW[:2]).labels.tolist()
    assert result.stdout.split() == [str(v) for v in expected]


def test_a_wrong_key_and_an_unknown_file_type_are_one_line_errors(device, tmp_path):
    from fedge.compression.bundle import generate_keypair

    _, other = generate_keypair(tmp_path / "other")
    wrong_key = CliRunner().invoke(
        app,
        ["infer", "-", "--model-dir", str(device.store), "--trusted-key", str(other)],
        input="[[0]]",
    )
    _refused(wrong_key, "signature check failed")
    (tmp_path / "x.txt").write_text("1,2")
    _refused(_infer(device, str(tmp_path / "x.txt")), "allowed: .npy, .csv, .json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b'[["1", 2]]', '"1" (a string) is not a number'),
        (b"[[1, true]]", "true (a boolean) is not a number"),
        (b"[[false]]", "false (a boolean) is not a number"),
        (b"[[1, null]]", "null is not a number"),
        (b'{"inputs": [[{"a": 1}]]}', "an object is not a number"),
        (b'{"inputs": "12"}', '"12" (a string) is not a number'),
    ],
)
def test_json_strings_and_booleans_are_not_numbers(text, message):
    """numpy reads "1" and true as 1.0: a request that sends them is refused, not answered."""
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_json(text, "request body")


def test_numbers_in_json_are_read_as_floats():
    assert from_json(b"[[1, 2.5], [-3, 1e3]]", "x").tolist() == [[1, 2.5], [-3, 1000]]


@pytest.mark.parametrize("shape", [(64, 1), (8, 8), (2, 32), (1, 64, 1), (1, 1, 64), (4, 16)])
def test_an_input_in_another_shape_is_refused_not_read_as_one_sample(device, shape):
    """64 values in a shape that is neither (N, 1, 8, 8), (N, 64), (1, 8, 8) nor (64,)."""
    predictor = Predictor(device.store, device.public_key, warmup=0)
    with pytest.raises(InputError, match=rf"input shape \({shape[0]}, .*does not fit"):
        predictor.predict(np.zeros(shape, np.float32))


@pytest.mark.parametrize(
    ("shape", "samples"), [((64,), 1), ((1, 8, 8), 1), ((3, 64), 3), ((3, 1, 8, 8), 3)]
)
def test_the_declared_shapes_are_predicted(device, shape, samples):
    predictor = Predictor(device.store, device.public_key, warmup=0)
    assert len(predictor.predict(np.zeros(shape, np.float32)).labels) == samples


def test_a_json_file_with_strings_is_a_one_line_error(device, tmp_path):
    (tmp_path / "x.json").write_text(json.dumps([["1"] * 64]))
    _refused(_infer(device, str(tmp_path / "x.json")), '"1" (a string) is not a number')
