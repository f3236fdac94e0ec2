"""center-inputs public: every input value shifted by the public pool's mean, end to end."""

import numpy as np
import pytest

from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.core.config import ConfigError, RunConfig
from fedge.core.data import Preprocessing, centered
from fedge.core.models import build_teacher
from fedge.core.ort import make_session
from fedge.core.partition import build_federation
from fedge.core.records import model_spec, record_to_spec

DIGITS = RunConfig(dataset="digits", clients=2, partition="iid")


def test_public_centering_gives_each_pixel_the_public_pools_mean_and_keeps_the_scale():
    plain = build_federation(DIGITS)
    fed = build_federation(DIGITS.replace(center_inputs="public"))
    prep = fed.dataset.preprocessing
    assert isinstance(prep.shift, tuple) and len(prep.shift) == 64  # one per pixel
    assert prep.scale == plain.dataset.preprocessing.scale == 1 / 16
    np.testing.assert_allclose(fed.server.public_pool.x.mean(0), 0, atol=1e-5)
    assert np.abs(plain.server.public_pool.x.mean(0)).max() > 0.3  # digits are not centered
    # The same raw samples in every split, only shifted: no sample moved between splits.
    shift = np.asarray(prep.shift, np.float32).reshape(1, 1, 8, 8) * prep.scale
    np.testing.assert_allclose(fed.server.test.x, plain.server.test.x - shift, atol=1e-6)
    np.testing.assert_array_equal(fed.client_y, plain.client_y)
    np.testing.assert_allclose(
        prep.invert(fed.server.val.x),
        plain.dataset.preprocessing.invert(plain.server.val.x),
        atol=1e-5,
    )


def test_a_per_value_shift_folds_into_the_device_model_and_travels_on_the_wire():
    fed = build_federation(DIGITS.replace(center_inputs="public"))
    prep = fed.dataset.preprocessing
    model = build_teacher((1, 8, 8), 10, seed=0, kind="linear").eval()
    exported = export_onnx(model, (1, 8, 8), ExportConfig())
    x = fed.server.test.x[:40]
    device = fold_device_ops(exported, prep, check_x=x)
    expected = make_session(exported).run(["probabilities"], {"input": x})[0]
    got = make_session(device).run(["probabilities"], {"input": prep.invert(x)})[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    wired, classes = record_to_spec(_record(model_spec(prep, 10)))
    assert classes == 10 and wired.shift == prep.shift
    np.testing.assert_array_equal(wired.apply(prep.invert(x)), prep.apply(prep.invert(x)))


def test_per_value_and_per_channel_statistics_broadcast_differently():
    raw = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
    per_value = Preprocessing(
        shift=tuple(float(v) for v in raw.ravel()), scale=1.0, input_shape=(2, 3, 4)
    )
    np.testing.assert_array_equal(per_value.apply(raw), 0)
    per_channel = Preprocessing(shift=(1.0, 2.0), scale=1.0, input_shape=(2, 3, 4))
    np.testing.assert_array_equal(per_channel.apply(raw)[0, 1], raw[0, 1] - 2)


def test_a_public_pool_without_a_finite_mean_is_refused():
    prep = Preprocessing(shift=0.0, scale=1.0, input_shape=(2,))
    with pytest.raises(ConfigError, match="center-inputs public"):
        centered(prep, np.array([[np.inf, 1.0], [0.0, 1.0]], np.float32))


def _record(values: dict) -> object:
    from flwr.app import ConfigRecord

    return ConfigRecord(values)


@pytest.mark.parametrize("length", [5, 8, 65])
def test_a_statistic_that_fits_neither_channels_nor_values_is_refused_by_name(length):
    with pytest.raises(ValueError, match=rf"shift has {length} values.*allowed: .*1 or 64"):
        Preprocessing(shift=(0.0,) * length, scale=1.0, input_shape=(1, 8, 8))


def test_center_inputs_with_the_tflite_target_is_refused_before_training():
    with pytest.raises(ConfigError, match="center-inputs public .* tflite target cannot fold"):
        RunConfig(center_inputs="public", device_targets="onnx,tflite")


def test_inputs_too_large_for_the_manifest_are_refused_before_training():
    prep = Preprocessing(shift=0.0, scale=1.0, input_shape=(3, 100, 100))
    with pytest.raises(ConfigError, match=r"30000 values.*at most 20000"):
        centered(prep, np.zeros((2, 3, 100, 100), np.float32))
