"""User data: every bad array is one clear error; per-feature standardization from the public pool."""

import numpy as np
import pytest
import torch

from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.core.config import ConfigError, RunConfig
from fedge.core.data import Preprocessing, dataset_from_arrays, standardization
from fedge.core.models import build_teacher
from fedge.core.ort import make_session
from fedge.core.partition import build_federation
from fedge.core.training import evaluate, train


def arrays(n: int = 40, d: int = 3, rng=None):
    rng = rng or np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % 2
    return {"x_train": x, "y_train": y, "x_test": x[:10], "y_test": y[:10]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"y_train": np.zeros(40, dtype=np.int64)},
            "y_train holds only class 0; allowed: at least 2",
        ),
        (
            {"y_train": (np.arange(40) % 2) * 2**40},
            "labels must be class indices in [0, 1000), found 1099511627776",
        ),
        (
            {"y_train": (np.arange(40) % 2).reshape(40, 1)},
            "y_train must be 1-D class labels (N,), got shape (40, 1)",
        ),
        ({"y_test": np.full(10, 2**64 - 1, dtype=np.uint64)}, "found 18446744073709551615"),
        ({"y_train": np.arange(40) % 2 - 1}, "found -1"),
        ({"x_train": np.ones((40, 3), dtype=np.complex64)}, "x_train must hold real numbers"),
        ({"x_train": np.full((40, 3), 3e38, dtype=np.float32)}, "beyond +-1e+15"),
        ({"x_train": np.full((40, 3), np.nan, dtype=np.float32)}, "x_train holds NaN"),
        ({"y_train": (np.arange(40) % 2).astype(np.float32)}, "y_train must hold integer labels"),
        (
            {"x_train": np.zeros((40,), dtype=np.float32)},
            "x_train has shape (40,); allowed: one row per sample, (N, D), (N, C, L)",
        ),
        ({"x_train": np.array(5.0, dtype=np.float32)}, "x_train has shape (); allowed"),
        ({"x_test": np.zeros((10, 4), dtype=np.float32)}, "sample shapes differ"),
    ],
)
def test_bad_user_arrays_are_one_clear_error(change, message):
    with pytest.raises(ConfigError) as err:
        dataset_from_arrays("data.npz", **{**arrays(), **change})
    assert message in str(err.value)


def test_a_devices_own_data_may_hold_one_class():
    data = {
        **arrays(),
        "y_train": np.zeros(40, dtype=np.int64),
        "y_test": np.zeros(10, dtype=np.int64),
    }
    assert dataset_from_arrays("node.npz", **data, min_classes=1).num_classes == 1


def _tabular(tmp_path, rng):
    """Two informative features of scale 0.01 among six noise features of scale 10,000."""
    n = 1200
    y = rng.integers(0, 2, n)
    signal = (y[:, None] * 2 - 1) * 0.01 + rng.normal(scale=0.004, size=(n, 2))
    noise = rng.normal(scale=1e4, size=(n, 6))
    x = np.concatenate([signal, noise], axis=1).astype(np.float32)
    path = tmp_path / "tab.npz"
    np.savez(path, x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    return path


def test_per_feature_standardization_comes_from_the_public_pool_and_lets_a_model_learn(tmp_path):
    path = _tabular(tmp_path, np.random.default_rng(0))
    cfg = RunConfig(dataset=f"npz:{path}", clients=2, partition="iid")
    fed = build_federation(cfg)
    prep = fed.dataset.preprocessing
    assert isinstance(prep.scale, tuple) and len(prep.scale) == 8  # one per feature
    raw_pool = prep.invert(fed.server.public_pool.x)
    np.testing.assert_allclose(prep.shift, raw_pool.mean(0), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(prep.scale, 1 / raw_pool.std(0), rtol=1e-3)
    pooled = fed.server.public_pool.x
    np.testing.assert_allclose(pooled.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(pooled.std(0), 1, atol=1e-3)
    # Differential: the same model and training, one scalar shift/scale for every feature.
    raw_x, raw_test = prep.invert(fed.client_x), prep.invert(fed.server.test.x)
    scalar = Preprocessing(float(raw_x.mean()), float(1 / raw_x.std()), (8,))
    accuracy = {}
    for name, p in (("feature", prep), ("scalar", scalar)):
        torch.manual_seed(0)
        model = build_teacher((8,), 2, seed=0)
        train(model, p.apply(raw_x), fed.client_y, epochs=5, lr=0.05, batch_size=32, seed=0)
        accuracy[name] = evaluate(model, p.apply(raw_test), fed.server.test.y)[1]
    assert accuracy["feature"] > 0.9 and accuracy["feature"] > accuracy["scalar"] + 0.2


def test_per_channel_statistics_fold_into_the_device_model():
    rng = np.random.default_rng(1)
    raw = (
        rng.normal(size=(64, 2, 10)) * np.array([[1.0], [1000.0]]) + np.array([[5.0], [-300.0]])
    ).astype(np.float32)
    prep = standardization(raw, "signal", (2, 10))
    assert len(prep.shift) == 2 and prep.shift[1] == pytest.approx(-300, abs=200)
    model = build_teacher((2, 10), 3, seed=0).eval()
    exported = export_onnx(model, (2, 10), ExportConfig())
    x = prep.apply(raw)
    device = fold_device_ops(exported, prep, check_x=x)
    expected = make_session(exported).run(["probabilities"], {"input": x})[0]
    got = make_session(device).run(["probabilities"], {"input": raw})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_an_npz_of_n_h_w_images_takes_the_image_path_and_n_c_l_stays_a_signal():
    from fedge.core.data import dataset_from_arrays

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 28, 28)).astype(np.uint8)
    labels = np.arange(40) % 4
    data = dataset_from_arrays("own", images, labels, images[:8], labels[:8])
    assert data.kind == "image" and data.preprocessing.input_shape == (1, 28, 28)
    signals = rng.normal(size=(40, 2, 40)).astype(np.float32)
    data = dataset_from_arrays("own", signals, labels, signals[:8], labels[:8])
    assert data.kind == "signal" and data.preprocessing.input_shape == (2, 40)
