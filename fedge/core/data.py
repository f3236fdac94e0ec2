"""Built-in offline datasets (digits, mnist1d) and the user's own npz, as raw arrays + preprocessing."""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.core.config import ConfigError

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True)
class Preprocessing:
    """x_model = ((x_raw - shift) * scale).reshape(-1, *input_shape); stored in the manifest."""

    shift: float
    scale: float
    input_shape: tuple[int, ...]  # per-sample shape the model takes, channels first

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw samples (any shape with the right element count) -> model input, float32."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, *self.input_shape)
        return ((x - self.shift) * self.scale).astype(np.float32)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Model input -> raw samples (what a device measures), float32."""
        return (np.asarray(x, dtype=np.float32) / self.scale + self.shift).astype(np.float32)

    def to_json(self) -> dict[str, object]:
        """For the bundle manifest."""
        return {"shift": self.shift, "scale": self.scale, "input_shape": list(self.input_shape)}


@dataclass(frozen=True)
class Dataset:
    """Raw arrays of one dataset. x_test/y_test is None when the data set has no test split."""

    name: str
    kind: str  # image | signal | tabular: decides the model family
    x: np.ndarray  # raw training samples
    y: np.ndarray  # int64 labels 0..num_classes-1
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    preprocessing: Preprocessing
    num_classes: int


def load_dataset(name: str) -> Dataset:
    """Load `digits`, `mnist1d` or `npz:PATH` (cached per process)."""
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d()
    if name.startswith("npz:"):
        path = Path(name[4:]).expanduser().resolve()
        stat = path.stat() if path.is_file() else None
        return _npz(str(path), stat.st_mtime_ns if stat else 0)
    raise ConfigError(f"unknown dataset {name!r}; allowed: digits, mnist1d, npz:PATH")


@functools.cache
def _digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data.astype(np.float32)  # 0..16 grey levels
    return Dataset(
        name="digits",
        kind="image",
        x=x,
        y=bunch.target.astype(np.int64),
        x_test=None,
        y_test=None,
        preprocessing=Preprocessing(shift=0.0, scale=1 / 16, input_shape=(1, 8, 8)),
        num_classes=10,
    )


@functools.cache
def _mnist1d() -> Dataset:
    # make_dataset generates locally; get_dataset would try a download and write a pickle.
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return Dataset(
        name="mnist1d",
        kind="signal",
        x=np.asarray(data["x"], dtype=np.float32),
        y=np.asarray(data["y"], dtype=np.int64),
        x_test=np.asarray(data["x_test"], dtype=np.float32),
        y_test=np.asarray(data["y_test"], dtype=np.int64),
        preprocessing=Preprocessing(shift=0.0, scale=1.0, input_shape=(1, 40)),
        num_classes=10,
    )


@functools.cache
def _npz(path: str, _mtime_ns: int) -> Dataset:
    return dataset_from_arrays(Path(path).name, **read_npz(Path(path)))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of a user's npz; every problem is a ConfigError naming the file and fault."""
    if not path.is_file():
        raise ConfigError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise ConfigError(
                    f"npz {path} lacks arrays {', '.join(missing)}; "
                    f"required: {', '.join(NPZ_KEYS)} (has: {', '.join(npz.files) or 'none'})"
                )
            return {k: npz[k] for k in NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"cannot read npz {path}: {err}") from err


def dataset_from_arrays(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Dataset:
    """Validate user arrays and choose the model family from the sample shape.

    (N, D) is tabular (MLP), (N, C, L) a signal (1-D CNN), (N, C, H, W) an image (2-D CNN).
    """
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(xs) != len(ys):
            raise ConfigError(f"{name}: x_{split} has {len(xs)} rows but y_{split} has {len(ys)}")
        if len(xs) == 0:
            raise ConfigError(f"{name}: x_{split} is empty")
        if not np.issubdtype(xs.dtype, np.number):
            raise ConfigError(f"{name}: x_{split} must be numeric, got dtype {xs.dtype}")
        if not np.issubdtype(ys.dtype, np.integer):
            raise ConfigError(f"{name}: y_{split} must hold integer labels, got {ys.dtype}")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            f"{name}: sample shapes differ: x_train {x_train.shape[1:]} vs x_test {x_test.shape[1:]}"
        )
    kinds = {2: "tabular", 3: "signal", 4: "image"}
    if x_train.ndim not in kinds:
        raise ConfigError(
            f"{name}: x_train has shape {x_train.shape}; allowed: (N, D), (N, C, L), (N, C, H, W)"
        )
    labels = np.concatenate([y_train, y_test])
    if labels.min() < 0:
        raise ConfigError(f"{name}: labels must be >= 0, found {labels.min()}")
    x_train = x_train.astype(np.float32)
    if not np.isfinite(x_train).all() or not np.isfinite(x_test).all():
        raise ConfigError(f"{name}: x_train or x_test holds NaN or Inf")
    std = float(x_train.std()) or 1.0
    return Dataset(
        name=name,
        kind=kinds[x_train.ndim],
        x=x_train,
        y=y_train.astype(np.int64),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        preprocessing=Preprocessing(
            shift=float(x_train.mean()), scale=1.0 / std, input_shape=tuple(x_train.shape[1:])
        ),
        num_classes=int(labels.max()) + 1,
    )
