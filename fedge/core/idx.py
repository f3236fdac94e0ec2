"""Fashion-MNIST's IDX files (gzip), read with bounds and checked: magic, counts, shapes, labels."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.core.settings import ConfigError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
DATA_DIR_ENV = "FEDGE_DATA_DIR"  # where to look when the data-dir setting is empty
HUB = "hub"  # data-dir value: download zalando-datasets/fashion_mnist through flwr-datasets
HUB_DATASET = "zalando-datasets/fashion_mnist"
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim
SIDE, CLASSES = 28, 10
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}
FIX = (
    "install Debian's package (apt-get install dataset-fashion-mnist), point --data-dir (or "
    f"${DATA_DIR_ENV}) at a directory with the four IDX files, or --data-dir {HUB} to download "
    f"{HUB_DATASET}"
)


@dataclass(frozen=True)
class FashionMnist:
    """The original split: 60,000 training and 10,000 test images (uint8, N x 28 x 28)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def data_dir(setting: str) -> Path:
    """The directory the data-dir setting names: itself, else $FEDGE_DATA_DIR, else Debian's."""
    return Path(setting or os.environ.get(DATA_DIR_ENV) or DEBIAN_DIR).expanduser()


def read_fashion_mnist(directory: Path) -> FashionMnist:
    """The four IDX files of `directory`; ConfigError naming the file, the fault and the fix."""
    if not directory.is_dir():
        problem = "is not a directory" if directory.exists() else "does not exist"
        raise ConfigError(f"fmnist: data-dir {directory} {problem}; {FIX}")
    arrays = {}
    for split, (images, labels, count) in FILES.items():
        x = _read(directory / images, IMAGES_MAGIC, (count, SIDE, SIDE))
        y = _read(directory / labels, LABELS_MAGIC, (count,))
        if int(y.max()) >= CLASSES:
            raise ConfigError(
                f"fmnist: {directory / labels} holds label {int(y.max())}; allowed: 0 to "
                f"{CLASSES - 1} (a damaged file: reinstall it, or {FIX})"
            )
        arrays[split] = (x, y.astype(np.int64))
    return FashionMnist(*arrays["train"], *arrays["test"])


def _read(path: Path, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """One IDX file: its header must say `magic` and `shape`, its body hold exactly that much."""
    if not path.is_file():
        raise ConfigError(f"fmnist: {path} not found; {FIX}")
    header_size = 4 + 4 * len(shape)
    body_size = int(np.prod(shape))
    try:
        with gzip.open(path, "rb") as file:
            raw = file.read(header_size + body_size + 1)  # bounded: a bomb stops here
    except (OSError, EOFError, zlib.error) as err:
        raise ConfigError(f"fmnist: {path} is not a readable gzip file ({err}); {FIX}") from None
    found = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else None
    if found != magic:
        shown = "none" if found is None else f"{found:#010x}"
        raise ConfigError(
            f"fmnist: {path} has magic number {shown}, not {magic:#010x}: not an IDX "
            f"{'image' if len(shape) == 3 else 'label'} file; {FIX}"
        )
    dims = struct.unpack(f">{len(shape)}I", raw[4:header_size]) if len(raw) >= header_size else ()
    if tuple(dims) != shape:
        raise ConfigError(f"fmnist: {path} declares shape {tuple(dims)}, expected {shape}; {FIX}")
    if len(raw) != header_size + body_size:
        have = len(raw) - header_size
        state = "truncated" if have < body_size else "longer than its header says"
        raise ConfigError(
            f"fmnist: {path} is {state} ({max(have, 0)} of {body_size} data bytes); {FIX}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def download_fashion_mnist() -> FashionMnist:
    """Fashion-MNIST from the Hugging Face hub through flwr-datasets (needs a network).

    ConfigError with the offline fixes when the hub cannot be reached.
    """
    try:
        from flwr_datasets import FederatedDataset
        from flwr_datasets.partitioner import IidPartitioner

        hub = FederatedDataset(dataset=HUB_DATASET, partitioners={"train": IidPartitioner(1)})
        train, test = hub.load_split("train"), hub.load_split("test")
    except Exception as err:  # noqa: BLE001  (any hub or network failure: one line, the fixes)
        raise ConfigError(f"fmnist: cannot download {HUB_DATASET} ({err}); {FIX}") from None

    def arrays(split: object) -> tuple[np.ndarray, np.ndarray]:
        rows = split.with_format("numpy")  # type: ignore[attr-defined]
        return np.asarray(rows["image"], dtype=np.uint8), np.asarray(rows["label"], np.int64)

    return FashionMnist(*arrays(train), *arrays(test))
