"""A user's npz is checked by its members' headers before any array expands."""

import io
import zipfile

import numpy as np
import pytest

from fedge.core import npz as npz_module
from fedge.core.data import NPZ_KEYS, read_npz
from fedge.core.settings import ConfigError


def _arrays(**change):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(20, 4)).astype(np.float32),
        "y_train": np.arange(20) % 2,
        "x_test": rng.normal(size=(6, 4)).astype(np.float32),
        "y_test": np.arange(6) % 2,
    }
    return {**arrays, **change}


def _member(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    return out.getvalue()


def _write(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return path


def test_a_good_npz_reads_back_as_saved(tmp_path):
    arrays = _arrays()
    np.savez_compressed(tmp_path / "ok.npz", **arrays)
    loaded = read_npz(tmp_path / "ok.npz")
    assert set(loaded) == set(NPZ_KEYS)
    for key in NPZ_KEYS:
        np.testing.assert_array_equal(loaded[key], arrays[key])


def test_a_header_that_declares_more_than_the_archive_holds_is_refused(tmp_path):
    members = {k: _member(v) for k, v in _arrays().items()}
    header = _member(np.zeros((10**6, 4), np.float32))[:128]  # a header alone: no data
    members["x_train"] = header
    with pytest.raises(ConfigError, match=r"x_train: its header declares shape \(1000000, 4\)"):
        read_npz(_write(tmp_path / "lies.npz", members))


def test_a_bomb_is_refused_by_its_declared_size_before_it_expands(tmp_path, monkeypatch):
    monkeypatch.setattr(npz_module, "MAX_NPZ_BYTES", 1024**2)
    big = np.zeros((300_000, 4), np.float32)  # 4.8 MB of zeros: a few kB compressed
    np.savez_compressed(tmp_path / "bomb.npz", **_arrays(x_train=big))
    loaded = []
    monkeypatch.setattr(np, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(ConfigError, match=r"declares 0\.0 GiB of arrays; allowed: at most"):
        read_npz(tmp_path / "bomb.npz")
    assert not loaded  # nothing was decompressed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_train": np.zeros((20, 0), np.float32)}, r"shape \(20, 0\), samples with no values"),
        ({"x_train": np.array([["a"] * 4] * 20)}, "is not a real number type"),
        ({"x_train": np.array([[object()] * 4] * 20)}, "is not a real number type"),
    ],
)
def test_members_of_a_wrong_kind_are_named(tmp_path, change, message):
    members = {k: _member(v) for k, v in _arrays(**change).items()}
    with pytest.raises(ConfigError, match=message):
        read_npz(_write(tmp_path / "bad.npz", members))


def test_a_missing_member_and_a_broken_archive_are_named(tmp_path):
    members = {k: _member(v) for k, v in _arrays().items() if k != "y_test"}
    with pytest.raises(ConfigError, match="lacks arrays y_test"):
        read_npz(_write(tmp_path / "short.npz", members))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConfigError, match="cannot read npz"):
        read_npz(tmp_path / "junk.npz")
    with pytest.raises(ConfigError, match="not found"):
        read_npz(tmp_path / "absent.npz")
