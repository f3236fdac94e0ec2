"""Seeded splits: central test, server validation, unlabeled public pool, and client partitions."""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.core.config import ConfigError, RunConfig
from fedge.core.data import (
    NPZ_KEYS,
    Dataset,
    Preprocessing,
    centered,
    dataset_from_arrays,
    load_dataset,
    read_npz,
    standardization,
)


@dataclass(frozen=True)
class Split:
    """Model-ready inputs (preprocessed) with labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class PublicPool:
    """The server's unlabeled public data: inputs only, by construction."""

    x: np.ndarray

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class ServerData:
    """What the server holds: it never sees client partitions."""

    test: Split
    val: Split
    public_pool: PublicPool


@dataclass(frozen=True)
class ClientData:
    """One client's private data: a training split and a local test split."""

    train: Split
    test: Split


@dataclass(frozen=True)
class RawSplits:
    """The server's splits as raw samples (what a device measures), before preprocessing."""

    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_pub: np.ndarray


@dataclass(frozen=True)
class Federation:
    """All splits of one run: server data and the index sets of every client partition.

    Samples are kept raw and preprocessed when asked for: a simulated client's process, which
    needs only its own partition, never makes the server's splits or the whole client pool in
    float32 (Fashion-MNIST: 220 MB per process).
    """

    dataset: Dataset
    raw_server: RawSplits
    client_raw: np.ndarray  # the raw pool that clients partition
    client_y: np.ndarray
    partitions: tuple[np.ndarray, ...]  # indices into the client pool, one array per client

    @functools.cached_property
    def server(self) -> ServerData:
        """The server's test, validation and public splits, preprocessed."""
        raw, prep = self.raw_server, self.dataset.preprocessing.apply
        return ServerData(
            test=Split(prep(raw.x_test), raw.y_test),
            val=Split(prep(raw.x_val), raw.y_val),
            public_pool=PublicPool(prep(raw.x_pub)),
        )

    @functools.cached_property
    def client_x(self) -> np.ndarray:
        """The whole client pool, preprocessed (the audit's replay trains every client)."""
        return self.dataset.preprocessing.apply(self.client_raw)


SPLIT_FIELDS = (
    "dataset",
    "dataset_size",
    "data_dir",
    "clients",
    "partition",
    "alpha",
    "classes_per_client",
    "seed",
    "test_fraction",
    "val_fraction",
    "public_fraction",
    "center_inputs",
)


def build_federation(cfg: RunConfig) -> Federation:
    """Make every split of a run, deterministically from the config (cached per process)."""
    return _build(RunConfig(**{name: getattr(cfg, name) for name in SPLIT_FIELDS}))


@functools.lru_cache(maxsize=4)
def _build(cfg: RunConfig) -> Federation:
    from sklearn.model_selection import train_test_split

    data = load_dataset(cfg.dataset, cfg.dataset_size, cfg.data_dir)
    rng_seed = cfg.seed
    x, y = data.x, data.y
    n_total = len(y) + (0 if data.y_test is None else len(data.y_test))
    if data.x_test is None or data.y_test is None:
        x, x_test, y, y_test = train_test_split(
            x, y, test_size=cfg.test_fraction, random_state=rng_seed, stratify=_strata(y)
        )
    else:
        x_test, y_test = data.x_test, data.y_test
    n_val = max(1, round(cfg.val_fraction * n_total))
    n_pub = max(1, round(cfg.public_fraction * n_total))
    if n_val + n_pub >= len(y):
        raise ConfigError(
            f"val-fraction + public-fraction leave no data for clients ({len(y)} samples)"
        )
    x, x_val, y, y_val = train_test_split(
        x, y, test_size=n_val, random_state=rng_seed + 1, stratify=_strata(y)
    )
    x, x_pub, y, _ = train_test_split(
        x, y, test_size=n_pub, random_state=rng_seed + 2, stratify=_strata(y)
    )
    if data.standardize:  # the server's own unlabeled pool sets the statistics: no data moves
        shape = data.preprocessing.input_shape
        data = dataclasses.replace(data, preprocessing=standardization(x_pub, data.kind, shape))
    if cfg.center_inputs == "public":
        data = dataclasses.replace(data, preprocessing=centered(data.preprocessing, x_pub))
    if cfg.clients * 2 > len(y):
        raise ConfigError(
            f"clients={cfg.clients} is too many for {len(y)} client samples of {data.name}; "
            f"allowed: at most {len(y) // 2} (each client needs a train and a test sample)"
        )
    partitions = partition_labels(y, cfg)
    return Federation(data, RawSplits(x_test, y_test, x_val, y_val, x_pub), x, y, partitions)


def client_data(fed: Federation, partition_id: int, cfg: RunConfig) -> ClientData:
    """A client's partition, with a seeded local test holdout."""
    if not 0 <= partition_id < len(fed.partitions):
        raise ConfigError(f"partition-id {partition_id} out of range 0..{len(fed.partitions) - 1}")
    train, test = client_indices(fed, partition_id, cfg)
    prep = fed.dataset.preprocessing.apply
    return ClientData(
        train=Split(prep(fed.client_raw[train]), fed.client_y[train]),
        test=Split(prep(fed.client_raw[test]), fed.client_y[test]),
    )


def client_indices(
    fed: Federation, partition_id: int, cfg: RunConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Indices into client_x of a client's training split and of its local test holdout."""
    idx = np.random.default_rng([cfg.seed, partition_id]).permutation(fed.partitions[partition_id])
    n_test = min(len(idx) - 1, max(1, round(cfg.client_test_fraction * len(idx))))
    return idx[n_test:], idx[:n_test]


def partition_labels(y: np.ndarray, cfg: RunConfig) -> tuple[np.ndarray, ...]:
    """Partition sample indices over clients with flwr-datasets partitioners."""
    from datasets import Dataset as HFDataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        Partitioner,
        PathologicalPartitioner,
    )

    n = cfg.clients
    partitioner: Partitioner
    if cfg.partition == "iid":
        partitioner = IidPartitioner(num_partitions=n)
    elif cfg.partition == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=n,
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=min(10, max(2, len(y) // (4 * n))),
            self_balancing=True,
            seed=cfg.seed,
        )
    else:
        num_classes = len(np.unique(y))
        if cfg.classes_per_client > num_classes:
            raise ConfigError(
                f"classes-per-client={cfg.classes_per_client} exceeds the {num_classes} classes"
            )
        partitioner = PathologicalPartitioner(
            num_partitions=n,
            partition_by="label",
            num_classes_per_partition=cfg.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=cfg.seed,
        )
    partitioner.dataset = HFDataset.from_dict({"label": y.tolist(), "idx": np.arange(len(y))})
    try:
        with warnings.catch_warnings():  # the Dirichlet partitioner warns on every retry
            warnings.simplefilter("ignore", UserWarning)
            parts = tuple(
                np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64) for i in range(n)
            )
    except ValueError as err:
        more = ", or generate more (dataset-size)" if cfg.dataset == "mnist1d" else ""
        raise ConfigError(
            f"cannot partition {len(y)} samples over {n} clients ({cfg.partition}): {err} "
            f"Use fewer clients or a larger alpha{more}"
        ) from err
    if cfg.partition == "iid":
        # IidPartitioner splits in order; shuffle the pool first so the split is seeded.
        order = np.random.default_rng(cfg.seed).permutation(len(y))
        parts = tuple(order[p] for p in parts)
    small = [i for i, p in enumerate(parts) if len(p) < 2]
    if small:
        raise ConfigError(
            f"partition {cfg.partition!r} left clients {small} with fewer than 2 samples; "
            "use fewer clients, a larger alpha, or more classes-per-client"
        )
    return parts


def _strata(y: np.ndarray) -> np.ndarray | None:
    """Stratify when every class has at least two samples, else plain random split."""
    counts = np.unique(y, return_counts=True)[1]
    return y if len(counts) > 1 and counts.min() >= 2 else None


def node_data(path: Path, prep: Preprocessing, num_classes: int) -> ClientData:
    """A real device's own data file (npz with x_train, y_train, x_test, y_test).

    The file gets the same checks as `--dataset npz:PATH`; then the server's preprocessing is
    applied, so the device's samples meet the federation's model. Samples or labels that do
    not fit that model are refused with the reason.
    """
    arrays = read_npz(Path(path))
    own = dataset_from_arrays(str(path), *(arrays[k] for k in NPZ_KEYS), min_classes=1)
    assert own.x_test is not None and own.y_test is not None  # npz data always has a test split
    if math.prod(own.x.shape[1:]) != math.prod(prep.input_shape):
        raise ConfigError(
            f"{path}: samples of shape {own.x.shape[1:]} do not fit the federation's model input "
            f"{prep.input_shape}"
        )
    if own.num_classes > num_classes:
        raise ConfigError(
            f"{path}: labels must be in 0..{num_classes - 1}, found {own.num_classes - 1}"
        )
    return ClientData(
        train=Split(prep.apply(own.x), own.y),
        test=Split(prep.apply(own.x_test), own.y_test),
    )
