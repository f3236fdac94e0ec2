import numpy as np
import pytest

from fedge.core.config import ConfigError, RunConfig
from fedge.core.data import load_dataset
from fedge.core.partition import PublicPool, build_federation, client_data


def _label_entropy(y: np.ndarray, classes: int = 10) -> float:
    p = np.bincount(y, minlength=classes) / len(y)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological"])
def test_partitions_are_disjoint_and_cover_the_client_pool(partition):
    fed = build_federation(RunConfig(partition=partition, clients=10, alpha=0.5))
    everything = np.concatenate(fed.partitions)
    assert len(everything) == len(np.unique(everything)) == len(fed.client_y)
    assert all(len(p) >= 2 for p in fed.partitions)


def test_server_splits_are_disjoint_from_clients_and_each_other():
    cfg = RunConfig()
    fed = build_federation(cfg)
    data = load_dataset("digits")
    total = (
        len(fed.server.test) + len(fed.server.val) + len(fed.server.public_pool) + len(fed.client_y)
    )
    assert total == len(data.y)
    rows = lambda x: {r.tobytes() for r in x.reshape(len(x), -1)}  # noqa: E731
    # digits has a few exact duplicate images; the splits may share those and nothing more.
    duplicates = len(data.x) - len({r.tobytes() for r in data.x})
    assert len(rows(fed.server.public_pool.x) & rows(fed.client_x)) <= duplicates
    assert len(rows(fed.server.test.x) & rows(fed.client_x)) <= duplicates
    assert isinstance(fed.server.public_pool, PublicPool)
    assert not hasattr(fed.server.public_pool, "y")


def test_skew_grows_as_alpha_shrinks():
    entropies = []
    for alpha in (100.0, 1.0, 0.1):
        fed = build_federation(RunConfig(partition="dirichlet", clients=10, alpha=alpha))
        entropies.append(np.mean([_label_entropy(fed.client_y[p]) for p in fed.partitions]))
    assert entropies[0] > entropies[1] > entropies[2]


def test_pathological_gives_k_classes_per_client():
    fed = build_federation(RunConfig(partition="pathological", clients=10, classes_per_client=2))
    assert all(len(np.unique(fed.client_y[p])) <= 2 for p in fed.partitions)


def test_splits_are_seeded():
    a = build_federation(RunConfig(partition="dirichlet", seed=1))
    b = build_federation(
        RunConfig(partition="dirichlet", seed=1, lr=0.2)
    )  # lr does not change splits
    c = build_federation(RunConfig(partition="dirichlet", seed=2))
    assert all(np.array_equal(x, y) for x, y in zip(a.partitions, b.partitions, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a.partitions, c.partitions, strict=True))


def test_client_holds_out_a_local_test_split():
    cfg = RunConfig(partition="iid")
    fed = build_federation(cfg)
    data = client_data(fed, 3, cfg)
    assert len(data.train) + len(data.test) == len(fed.partitions[3])
    assert len(data.test) == round(0.2 * len(fed.partitions[3]))


def test_more_clients_than_samples_is_refused():
    with pytest.raises(ConfigError, match="clients=5000 is too many"):
        build_federation(RunConfig(clients=5000, partition="iid"))


def test_mnist1d_is_generated_locally_with_its_own_test_split():
    fed = build_federation(RunConfig(dataset="mnist1d", partition="iid"))
    assert fed.server.test.x.shape == (1000, 1, 40)
    assert fed.dataset.kind == "signal"


def test_mnist1d_generates_as_many_samples_as_asked_and_the_default_is_its_own():
    default = build_federation(RunConfig(dataset="mnist1d", partition="iid"))
    same = build_federation(RunConfig(dataset="mnist1d", partition="iid", dataset_size=5000))
    np.testing.assert_array_equal(default.server.test.x, same.server.test.x)
    bigger = build_federation(RunConfig(dataset="mnist1d", partition="iid", dataset_size=6000))
    assert bigger.server.test.x.shape == (1200, 1, 40)
    assert sum(len(p) for p in bigger.partitions) > 1.19 * sum(len(p) for p in default.partitions)


def test_too_few_samples_for_dirichlet_clients_names_the_fix():
    cfg = RunConfig(dataset="mnist1d", clients=1000, partition="dirichlet")
    with pytest.raises(
        ConfigError,
        match=r"cannot partition 2250 samples over 1000 clients.*"
        r"generate more \(dataset-size\)",
    ):
        build_federation(cfg)


def test_the_largest_seed_allowed_builds_a_federation():
    # the splits draw with seed + 1 and seed + 2: scikit-learn takes at most 2**32 - 1
    fed = build_federation(RunConfig(clients=2, partition="iid", seed=2**32 - 3))
    assert len(fed.server.val) and len(fed.server.public_pool)


def test_dataset_size_is_refused_for_data_of_fixed_size():
    with pytest.raises(ConfigError, match="dataset-size applies to generated data only"):
        build_federation(RunConfig(dataset="digits", dataset_size=10_000))


def test_npz_dataset(tmp_path, rng):
    path = tmp_path / "data.npz"
    x = rng.normal(size=(400, 12)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.savez(path, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    fed = build_federation(RunConfig(dataset=f"npz:{path}", clients=3, partition="iid"))
    assert fed.dataset.kind == "tabular" and fed.dataset.num_classes == 2
    assert len(fed.server.test) == 100


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {
                "x_train": np.zeros((10, 3)),
                "y_train": np.zeros(10, int),
                "x_test": np.zeros((5, 3)),
            },
            "lacks arrays y_test",
        ),
        (
            {
                "x_train": np.zeros((10, 3)),
                "y_train": np.zeros(9, int),
                "x_test": np.zeros((5, 3)),
                "y_test": np.zeros(5, int),
            },
            "x_train has 10 rows but y_train has 9",
        ),
    ],
)
def test_bad_npz_is_a_clear_error(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=message):
        build_federation(RunConfig(dataset=f"npz:{path}", clients=2, partition="iid"))


def test_missing_npz_file(tmp_path):
    with pytest.raises(ConfigError, match="npz file not found"):
        build_federation(RunConfig(dataset=f"npz:{tmp_path}/nope.npz", clients=2))
