"""Built-in offline datasets (digits, mnist1d, fmnist) and the user's own npz, as raw arrays + preprocessing."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.core import idx
from fedge.core.bundle_format import statistic_lengths
from fedge.core.config import ConfigError
from fedge.core.npz import checked_npz

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


Statistic = float | tuple[float, ...]  # one value for every input value, or one per feature/channel


@dataclass(frozen=True)
class Preprocessing:
    """x_model = (x_raw - shift) * scale, per tensor, per feature (N, D), per channel or per value.

    Stored in the manifest and folded into the shipped graph. A tuple statistic has one value
    per feature or channel (the first axis), or one per value of a sample (C x H x W).
    """

    shift: Statistic
    scale: Statistic
    input_shape: tuple[int, ...]  # per-sample shape the model takes, channels first

    def __post_init__(self) -> None:
        """A tuple statistic must fit the shape: one per channel (first axis) or per value."""
        allowed = statistic_lengths(self.input_shape)
        for name in ("shift", "scale"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) not in allowed:
                raise ValueError(
                    f"preprocessing {name} has {len(value)} values for input shape "
                    f"{self.input_shape}; allowed: one number, or a list of "
                    f"{' or '.join(map(str, allowed))}"
                )

    def _broadcast(self, value: Statistic) -> np.ndarray:
        """A statistic shaped to broadcast against a batch: (), (D,), (C, 1, ...) or per value."""
        array = np.asarray(value, dtype=np.float32)
        if array.ndim == 0:
            return array
        if array.size == math.prod(self.input_shape):  # one per value (fedge.core.data.centered)
            return array.reshape(self.input_shape)
        return array.reshape(len(array), *([1] * (len(self.input_shape) - 1)))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Raw samples (any shape with the right element count) -> model input, float32."""
        x = np.asarray(x, dtype=np.float32).reshape(-1, *self.input_shape)
        return ((x - self._broadcast(self.shift)) * self._broadcast(self.scale)).astype(np.float32)

    def invert(self, x: np.ndarray) -> np.ndarray:
        """Model input -> raw samples (what a device measures), float32."""
        x = np.asarray(x, dtype=np.float32)
        return (x / self._broadcast(self.scale) + self._broadcast(self.shift)).astype(np.float32)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(shift, scale) as float32 arrays that broadcast against one batch."""
        return self._broadcast(self.shift), self._broadcast(self.scale)

    def to_json(self) -> dict[str, object]:
        """For the bundle manifest."""
        return {
            "shift": list(self.shift) if isinstance(self.shift, tuple) else self.shift,
            "scale": list(self.scale) if isinstance(self.scale, tuple) else self.scale,
            "input_shape": list(self.input_shape),
        }


def standardization(x: np.ndarray, kind: str, input_shape: tuple[int, ...]) -> Preprocessing:
    """Per-feature (tabular) or per-channel (signals, images) mean and 1/std of `x`.

    The statistics come from the server's own unlabeled public pool, so no client data moves.
    A constant feature keeps scale 1. ConfigError if they are not finite.
    """
    values = np.asarray(x, dtype=np.float64).reshape(-1, *input_shape)
    axes = (0,) if kind == "tabular" else (0, *range(2, values.ndim))
    mean, std = values.mean(axis=axes), values.std(axis=axes)
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ConfigError(
            "the data's mean or standard deviation is not finite (values too large for float "
            "arithmetic); allowed: finite values whose squares stay below 1e300"
        )
    scale = np.where(std > 0, 1.0 / np.where(std > 0, std, 1.0), 1.0)
    return Preprocessing(
        shift=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        input_shape=input_shape,
    )


MAX_CENTERED_VALUES = 20_000  # about 460 kB of manifest JSON, under its 1 MiB bound


def centered(prep: Preprocessing, x_raw: np.ndarray) -> Preprocessing:
    """`prep` with its shift replaced by the mean of raw samples `x_raw`, value by value.

    Each pixel, step or feature gets its own mean (the public pool's: no client data moves);
    the scale stays. A linear model under DP noise trains better on centered inputs: the mean
    image no longer takes a share of every clipped gradient. ConfigError if it is not finite.
    """
    values = math.prod(prep.input_shape)
    if values > MAX_CENTERED_VALUES:
        raise ConfigError(
            f"center-inputs public: a sample of shape {prep.input_shape} has {values} values, "
            f"each a shift in the bundle's manifest; allowed: at most {MAX_CENTERED_VALUES}"
        )
    mean = np.asarray(x_raw, dtype=np.float64).reshape(-1, *prep.input_shape).mean(axis=0)
    if not np.isfinite(mean).all():
        raise ConfigError(
            "center-inputs public: the public pool's mean is not finite; allowed: finite inputs"
        )
    return Preprocessing(
        shift=tuple(float(v) for v in mean.ravel()), scale=prep.scale, input_shape=prep.input_shape
    )


@dataclass(frozen=True)
class Dataset:
    """Raw arrays of one dataset. x_test/y_test is None when the data set has no test split."""

    name: str
    kind: str  # image | signal | tabular: decides the model family
    x: np.ndarray  # raw training samples (float32; fmnist's uint8 pixels)
    y: np.ndarray  # int64 labels 0..num_classes-1
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    preprocessing: Preprocessing
    num_classes: int
    standardize: bool = False  # user data: statistics from the public pool (build_federation)


def load_dataset(name: str, size: int = 0, data_dir: str = "") -> Dataset:
    """Load `digits`, `mnist1d`, `fmnist` or `npz:PATH` (cached per process).

    `size` > 0: generate that many mnist1d samples (the other datasets have a fixed size).
    `data_dir`: where fmnist's IDX files are (fedge.core.idx.data_dir), or `hub`.
    """
    if size and name != "mnist1d":
        raise ConfigError(
            f"dataset-size applies to generated data only (mnist1d), not {name!r}; "
            "allowed: dataset-size 0 or dataset mnist1d"
        )
    if name == "digits":
        return _digits()
    if name == "mnist1d":
        return _mnist1d(size or MNIST1D_SIZE)
    if name == "fmnist":
        if data_dir == idx.HUB:
            return _fmnist_hub()
        directory = idx.data_dir(data_dir).resolve()
        return _fmnist(str(directory), _mtimes(directory))
    if name.startswith("npz:"):
        if not name[4:].strip():
            raise ConfigError("dataset npz: names no file; allowed: npz:PATH")
        path = Path(name[4:]).expanduser().resolve()
        stat = path.stat() if path.is_file() else None
        return _npz(str(path), stat.st_mtime_ns if stat else 0)
    raise ConfigError(f"unknown dataset {name!r}; allowed: digits, mnist1d, fmnist, npz:PATH")


MNIST1D_SIZE = 5000  # mnist1d's own default number of samples
# Fashion-MNIST's pixel mean and standard deviation over its training images (0..255).
FMNIST_MEAN, FMNIST_STD = 72.94, 90.02


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
def _mnist1d(size: int) -> Dataset:
    # make_dataset generates locally; get_dataset would try a download and write a pickle.
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = size  # another size is another draw: the default stays the same data
    data = make_dataset(args)
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
def _fmnist(directory: str, _mtimes: tuple[int, ...]) -> Dataset:
    return _fmnist_dataset(idx.read_fashion_mnist(Path(directory)))


@functools.cache
def _fmnist_hub() -> Dataset:
    return _fmnist_dataset(idx.download_fashion_mnist())


def _fmnist_dataset(data: idx.FashionMnist) -> Dataset:
    """The original 60,000 / 10,000 split as raw pixels 0..255, standardized in the model.

    The raw pixels stay uint8 (a quarter of float32's memory, in every process that loads
    them); the splits are made float32 as they are preprocessed.
    """
    return Dataset(
        name="fmnist",
        kind="image",
        x=data.x_train.reshape(len(data.x_train), -1),
        y=data.y_train,
        x_test=data.x_test.reshape(len(data.x_test), -1),
        y_test=data.y_test,
        preprocessing=Preprocessing(
            shift=FMNIST_MEAN, scale=1 / FMNIST_STD, input_shape=(1, idx.SIDE, idx.SIDE)
        ),
        num_classes=idx.CLASSES,
    )


def _mtimes(directory: Path) -> tuple[int, ...]:
    """The IDX files' modification times: a replaced file is read again."""
    names = [name for pair in idx.FILES.values() for name in pair[:2]]
    return tuple(
        (directory / n).stat().st_mtime_ns if (directory / n).is_file() else 0 for n in names
    )


@functools.cache
def _npz(path: str, _mtime_ns: int) -> Dataset:
    arrays = read_npz(Path(path))
    return dataset_from_arrays(Path(path).name, *(arrays[k] for k in NPZ_KEYS))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The four arrays of a user's npz, headers checked first (fedge.core.npz)."""
    return checked_npz(path, NPZ_KEYS)


MAX_CLASSES = 1000  # labels are class indices 0..MAX_CLASSES-1
MIN_IMAGE_SIDE = 16  # a 3-D array with both sides this long is (N, H, W) images, else signals
MAX_ABS_X = 1e15  # larger raw values make float statistics and float32 inputs unreliable


def dataset_from_arrays(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    min_classes: int = 2,
) -> Dataset:
    """Validate user arrays and choose the model family from the sample shape.

    (N, D) is tabular (MLP), (N, C, L) a signal (1-D CNN), (N, C, H, W) an image (2-D CNN);
    (N, H, W) with both sides at least MIN_IMAGE_SIDE is a one-channel image (as Fashion-MNIST
    is stored), a narrower 3-D array a signal.
    Every problem is a ConfigError naming the array and what is allowed; a federation's data
    needs `min_classes` classes in each split (one device's own data may hold one). The inputs are
    standardized per feature (tabular) or per channel, from the public pool (build_federation).
    """
    kinds = {2: "tabular", 3: "signal", 4: "image"}
    for split, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        _check_split(name, split, xs, ys, min_classes)
    if x_train.ndim == 3 and x_test.ndim == 3 and min(x_train.shape[1:]) >= MIN_IMAGE_SIDE:
        x_train, x_test = x_train[:, None], x_test[:, None]  # (N, H, W): one channel
    if x_train.ndim not in kinds:
        raise ConfigError(
            f"{name}: x_train has shape {x_train.shape}; allowed: (N, D), (N, C, L), (N, C, H, W)"
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ConfigError(
            f"{name}: sample shapes differ: x_train {x_train.shape[1:]} vs x_test {x_test.shape[1:]}"
        )
    classes = int(max(y_train.max(), y_test.max())) + 1
    shape = tuple(int(d) for d in x_train.shape[1:])
    return Dataset(
        name=name,
        kind=kinds[x_train.ndim],
        x=x_train.astype(np.float32),
        y=y_train.astype(np.int64),
        x_test=x_test.astype(np.float32),
        y_test=y_test.astype(np.int64),
        # Replaced by per-feature/per-channel statistics of the public pool in build_federation.
        preprocessing=Preprocessing(shift=0.0, scale=1.0, input_shape=shape),
        num_classes=classes,
        standardize=True,
    )


def _check_split(name: str, split: str, xs: np.ndarray, ys: np.ndarray, min_classes: int) -> None:
    """One split's arrays: shapes, dtypes, label range, at least two classes, finite x."""
    if xs.ndim < 2:
        raise ConfigError(
            f"{name}: x_{split} has shape {xs.shape}; allowed: one row per sample, (N, D), "
            "(N, C, L), (N, H, W) or (N, C, H, W)"
        )
    if ys.ndim != 1:
        raise ConfigError(f"{name}: y_{split} must be 1-D class labels (N,), got shape {ys.shape}")
    if len(xs) != len(ys):
        raise ConfigError(f"{name}: x_{split} has {len(xs)} rows but y_{split} has {len(ys)}")
    if len(xs) == 0:
        raise ConfigError(f"{name}: x_{split} is empty")
    if np.iscomplexobj(xs) or not np.issubdtype(xs.dtype, np.number):
        raise ConfigError(f"{name}: x_{split} must hold real numbers, got dtype {xs.dtype}")
    if ys.dtype.kind not in "iu":
        raise ConfigError(f"{name}: y_{split} must hold integer labels, got {ys.dtype}")
    low, high = int(ys.min()), int(ys.max())
    if low < 0 or high >= MAX_CLASSES:
        raise ConfigError(
            f"{name}: y_{split} labels must be class indices in [0, {MAX_CLASSES}), found "
            f"{low if low < 0 else high}"
        )
    if len(np.unique(ys)) < min_classes:
        raise ConfigError(
            f"{name}: y_{split} holds only class {low}; allowed: at least {min_classes} classes"
        )
    finite = xs.dtype.kind in "iub" or bool(np.isfinite(xs).all())  # no float64 copy of x
    largest = max(abs(float(xs.min())), abs(float(xs.max()))) if finite else math.inf
    if not finite or largest > MAX_ABS_X:
        raise ConfigError(
            f"{name}: x_{split} holds NaN, Inf or values beyond +-{MAX_ABS_X:g}; allowed: "
            "finite values of at most that size"
        )
