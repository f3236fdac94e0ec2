"""The torch-free device runtime's Predictor (fedge infer and serve as processes: tests/e2e/)."""

import numpy as np
import onnx
import pytest

from fedge.client.runtime.predictor import InputError, Predictor
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError, load_public_key
from fedge.compression.bundle import make_bundle
from fedge.core.data import load_dataset
from fedge.core.ort import make_session, session_logits
from tests.client.conftest import bundle_config

RAW = load_dataset("digits").x[:32]  # raw 0..16 grey levels, flat (N, 64)


def test_predictions_equal_onnxruntime_on_preprocessed_input(device, student_onnx):
    """Raw input through the shipped model == the exported student on preprocessed input."""
    predictor = Predictor(device.store, device.public_key)
    prediction = predictor.predict(RAW)
    logits = session_logits(
        make_session(student_onnx), (RAW / 16).reshape(-1, 1, 8, 8).astype(np.float32)
    )
    assert np.array_equal(prediction.labels, logits.argmax(1))
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(
        prediction.probabilities, expected / expected.sum(1, keepdims=True), rtol=1e-5, atol=1e-6
    )
    assert prediction.version == 1 and prediction.model_id == "test"


def test_a_model_without_the_device_contract_is_refused(device, student_onnx):
    """A signed bundle whose model still expects preprocessed input is never made current."""
    predictor = Predictor(device.store, device.public_key, check_interval=0.0)
    bad = make_bundle(student_onnx, bundle_config(2), device.private_key)
    with pytest.raises(BundleError, match="device-model check failed: model outputs"):
        ModelStore(device.store).install(bad, load_public_key(device.public_key))
    assert ModelStore(device.store).current_version() == 1
    assert predictor.predict(RAW[:1]).version == 1  # keeps serving the good one
    # Written behind the store's back, it is refused when loaded too.
    version = device.store / "versions" / "2"
    version.mkdir()
    for name, data in bad.items():
        (version / name).write_bytes(data)
    (device.store / "CURRENT").write_text("2")
    assert predictor.predict(RAW[:1]).version == 1
    assert "device-model check failed" in predictor.last_error
    with pytest.raises(BundleError, match="device-model"):
        Predictor(device.store, device.public_key)


@pytest.mark.parametrize("shape", [(32, 64), (32, 1, 8, 8)])
def test_batch_layouts(device, shape):
    """Flat and channel-first batches give the same predictions, sample for sample."""
    predictor = Predictor(device.store, device.public_key)
    reference = predictor.predict(RAW.reshape(32, 1, 8, 8))
    got = predictor.predict(RAW.reshape(shape))
    assert got.labels.shape == (32,)
    np.testing.assert_array_equal(got.labels, reference.labels)
    np.testing.assert_array_equal(got.probabilities, reference.probabilities)
    one_by_one = [
        predictor.predict(RAW[i : i + 1].reshape(1, *shape[1:])).labels[0] for i in range(32)
    ]
    np.testing.assert_array_equal(got.labels, one_by_one)


def test_one_sample_without_batch_axis_and_integer_input(device):
    predictor = Predictor(device.store, device.public_key)
    one = predictor.predict(RAW[0].astype(np.int64))
    assert one.labels.shape == (1,) and one.labels[0] == predictor.predict(RAW[:1]).labels[0]


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        (
            np.zeros((2, 63), np.float32),
            "input shape (2, 63) does not fit: expected (N, 1, 8, 8) or (N, 64)",
        ),
        (np.array([["a"] * 64]), "is not numeric"),
    ],
)
def test_bad_input_is_a_clear_error(device, batch, message):
    with pytest.raises(InputError) as err:
        Predictor(device.store, device.public_key).predict(batch)
    assert message in str(err.value)


def test_nan_input_is_refused_by_the_parsers():
    from fedge.client.runtime.inputs import from_json

    with pytest.raises(InputError, match="NaN is not a number"):
        from_json("[[NaN, 1.0]]", "stdin")
    with pytest.raises(InputError, match="NaN or Inf"):
        from_json("[[1e400, 1.0]]", "stdin")


def test_picks_up_a_newer_bundle_without_restart(device):
    predictor = Predictor(device.store, device.public_key, check_interval=0.0)
    device.install(2)
    assert predictor.predict(RAW[:1]).version == 2


def test_a_tampered_newer_bundle_is_refused_and_the_current_one_keeps_serving(device):
    predictor = Predictor(device.store, device.public_key, check_interval=0.0)
    device.install(2)
    model = device.store / "versions" / "2" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 1
    model.write_bytes(bytes(data))
    assert predictor.predict(RAW[:1]).version == 1
    assert "sha256" in predictor.last_error


def test_external_data_is_refused_before_onnxruntime(device, tmp_path, monkeypatch):
    proto = onnx.load_from_string(device.model_bytes)
    onnx.save_model(
        proto, tmp_path / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0
    )
    external = (tmp_path / "m.onnx").read_bytes()
    import onnxruntime

    monkeypatch.setattr(
        onnxruntime, "InferenceSession", lambda *a, **k: pytest.fail("onnxruntime saw it")
    )
    with pytest.raises(BundleError) as err:
        ModelStore(device.store).install(
            make_bundle(external, bundle_config(2), device.private_key),
            load_public_key(device.public_key),
        )
    assert err.value.check == "external-data"
