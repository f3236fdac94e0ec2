"""Fashion-MNIST's IDX files: the real ones load, every damaged one is named with its fix."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fedge.core import idx
from fedge.core.config import ConfigError, RunConfig

REAL = idx.DEBIAN_DIR
needs_real = pytest.mark.skipif(
    not (REAL / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (.ci/run installs it)",
)


def _write(path, magic, shape, body: bytes | None = None):
    header = struct.pack(f">I{len(shape)}I", magic, *shape)
    data = body if body is not None else bytes(int(np.prod(shape)))
    with gzip.open(path, "wb", compresslevel=1) as file:
        file.write(header + data)


def _fake(directory, **overrides):
    """Four valid (all-zero, label 0) IDX files; `overrides` replace one file's parts."""
    directory.mkdir(exist_ok=True)
    for images, labels, count in idx.FILES.values():
        specs = {
            images: (idx.IMAGES_MAGIC, (count, 28, 28), None),
            labels: (idx.LABELS_MAGIC, (count,), None),
        }
        for name, (magic, shape, body) in specs.items():
            magic, shape, body = overrides.get(name, (magic, shape, body))
            _write(directory / name, magic, shape, body)
    return directory


@needs_real
def test_the_real_files_load_with_the_original_split():
    data = idx.read_fashion_mnist(REAL)
    assert data.x_train.shape == (60_000, 28, 28) and data.x_test.shape == (10_000, 28, 28)
    assert np.bincount(data.y_train).tolist() == [6000] * 10  # balanced, as published
    assert abs(data.x_train.mean() - 72.94) < 0.01 and abs(data.x_train.std() - 90.02) < 0.01


@needs_real
def test_the_split_draws_validation_and_the_pool_from_training_images_only():
    from fedge.core.partition import build_federation

    fed = build_federation(RunConfig(dataset="fmnist", clients=20))
    assert len(fed.server.test) == 10_000  # the published test set, nothing else
    held = len(fed.server.val) + len(fed.server.public_pool) + len(fed.client_y)
    assert held == 60_000 and sum(len(p) for p in fed.partitions) == len(fed.client_y)
    assert fed.server.test.x.shape[1:] == (1, 28, 28)


def test_fake_files_load(tmp_path):
    data = idx.read_fashion_mnist(_fake(tmp_path / "d"))
    assert data.y_test.shape == (10_000,) and data.y_train.dtype == np.int64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"train-images-idx3-ubyte.gz": (0x00000801, (60_000, 28, 28), None)},
            "train-images-idx3-ubyte.gz has magic number 0x00000801, not 0x00000803",
        ),
        (
            {"t10k-labels-idx1-ubyte.gz": (idx.LABELS_MAGIC, (9_999,), None)},
            "t10k-labels-idx1-ubyte.gz declares shape (9999,), expected (10000,)",
        ),
        (
            {"t10k-images-idx3-ubyte.gz": (idx.IMAGES_MAGIC, (10_000, 28, 28), bytes(100))},
            "t10k-images-idx3-ubyte.gz is truncated (100 of 7840000 data bytes)",
        ),
        (
            {"train-labels-idx1-ubyte.gz": (idx.LABELS_MAGIC, (60_000,), bytes([10]) * 60_000)},
            "train-labels-idx1-ubyte.gz holds label 10; allowed: 0 to 9",
        ),
    ],
)
def test_a_damaged_file_is_named_with_its_fault_and_the_fix(tmp_path, overrides, message):
    directory = _fake(tmp_path / "d", **overrides)
    with pytest.raises(ConfigError, match="apt-get install dataset-fashion-mnist") as err:
        idx.read_fashion_mnist(directory)
    assert message in str(err.value)


def test_missing_files_a_file_and_a_non_gzip_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="data-dir .*nowhere does not exist; install Debian"):
        idx.read_fashion_mnist(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        idx.read_fashion_mnist(tmp_path / "file")
    directory = _fake(tmp_path / "d")
    (directory / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(ConfigError, match="t10k-images-idx3-ubyte.gz not found; install"):
        idx.read_fashion_mnist(directory)
    (directory / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="is not a readable gzip file"):
        idx.read_fashion_mnist(directory)


def test_a_decompression_bomb_stops_at_the_declared_size(tmp_path):
    directory = _fake(tmp_path / "d")
    bomb = bytes(7_840_000 + 50_000_000)  # 50 MB more than the header says
    _write(directory / "t10k-images-idx3-ubyte.gz", idx.IMAGES_MAGIC, (10_000, 28, 28), bomb)
    with pytest.raises(ConfigError, match="longer than its header says"):
        idx.read_fashion_mnist(directory)


def test_data_dir_comes_from_the_setting_then_the_environment_then_debian(monkeypatch, tmp_path):
    monkeypatch.delenv(idx.DATA_DIR_ENV, raising=False)
    assert idx.data_dir("") == idx.DEBIAN_DIR
    monkeypatch.setenv(idx.DATA_DIR_ENV, str(tmp_path))
    assert idx.data_dir("") == tmp_path and idx.data_dir("/x") == idx.data_dir("/x")
    with pytest.raises(ConfigError, match="data-dir '/x' applies to fmnist only"):
        RunConfig(data_dir="/x")
