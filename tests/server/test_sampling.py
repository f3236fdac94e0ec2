"""Client sampling: seeded by partition, recorded per round, the same after a restart, honest DP."""

import numpy as np
import pytest

from fedge.client.app import app as client_app
from fedge.core import messages as m
from fedge.core.config import ConfigError, RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import build_federation
from fedge.core.records import model_spec
from fedge.core.sampling import poisson, train_sample, train_size
from fedge.core.training import get_weights
from fedge.pipeline.rundir.checkpoint import CheckpointDir
from fedge.privacy.central import central_epsilon, central_noise
from fedge.server.nodes import Nodes
from fedge.server.training_loop import RoundLoop, train_teacher
from tests.flower_local import LocalGrid

SAMPLED = RunConfig(clients=6, rounds=3, partition="iid", local_epochs=1, fraction_train=0.5)


def test_a_round_samples_a_seeded_fixed_number_of_partitions():
    big = RunConfig(clients=1000, fraction_train=0.1)
    first = train_sample(big, 1)
    assert len(first) == 100 == train_size(big) and first == sorted(set(first))
    assert first == train_sample(big, 1) and first != train_sample(big, 2)
    assert first != train_sample(big.replace(seed=1), 1)
    assert len(train_sample(big.replace(min_train_clients=150), 1)) == 150
    assert train_sample(RunConfig(clients=7), 3) == list(range(7))  # fraction-train 1: everyone


def test_central_dp_samples_each_client_independently_and_pays_less_for_it():
    cfg = RunConfig(clients=1000, dp="central", dp_noise=1.0, fraction_train=0.1, rounds=20)
    assert poisson(cfg)
    sizes = [len(train_sample(cfg, r, secret=7)) for r in range(1, 201)]
    assert 95 < np.mean(sizes) < 105 and len(set(sizes)) > 5  # Poisson: the count varies
    # Who is sampled follows the server's secret, not the seed every client knows.
    assert train_sample(cfg, 1, secret=7) == train_sample(cfg.replace(seed=5), 1, secret=7)
    assert train_sample(cfg, 1, secret=7) != train_sample(cfg, 1, secret=8)
    with pytest.raises(ValueError, match="secret"):
        train_sample(cfg, 1)
    full = cfg.replace(fraction_train=1.0)
    assert central_epsilon([1.0] * 20, cfg) < central_epsilon([1.0] * 20, full) / 3
    target = cfg.replace(dp_noise=0.0, dp_epsilon=3.0)
    assert central_noise(target) < central_noise(target.replace(fraction_train=1.0)) / 2


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_train_clients": 7}, "more clients than exist"),
        ({"fraction_train": 0.1, "min_clients": 2}, "exceeds the 1 clients sampled"),
        ({"fraction_train": 1.5}, r"fraction-train must be in \(0, 1\]"),
        (
            {"dp": "central", "dp_noise": 1.0, "fraction_train": 0.5, "min_train_clients": 2},
            "Poisson",
        ),
    ],
)
def test_bad_sampling_settings_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(clients=6, **changes)


def _train(cfg, grid, checkpoints=None, secret=None):
    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, seed=cfg.seed)
    spec = model_spec(fed.dataset.preprocessing, 10)
    loop = RoundLoop(Nodes(), sampling_secret=secret)
    log = train_teacher(grid, cfg, teacher, fed.server.test, spec, checkpoints, loop=loop)
    return log, get_weights(teacher)


def test_only_the_sampled_partitions_train_and_a_restart_samples_the_same(tmp_path):
    grid = LocalGrid(client_app, num_nodes=6)
    log, weights = _train(SAMPLED, grid)
    for row in log.rounds:
        assert row["sampled"] == train_sample(SAMPLED, row["round"]) and row["clients_ok"] == 3
        trained = sorted(
            grid.contexts[msg.metadata.dst_node_id].node_config["partition-id"]
            for msg in grid.sent
            if msg.metadata.message_type == m.TRAIN
            and msg.content.config_records[m.CONFIG]["server-round"] == row["round"]
        )
        assert trained == row["sampled"]
    assert len(log.client_teacher_accuracy) == 6  # every client evaluates the final teacher

    # Stopped after round 2, restarted with new node ids: the same clients, the same model.
    checkpoints = CheckpointDir(tmp_path / "checkpoints")
    _train(SAMPLED.replace(rounds=2), LocalGrid(client_app, num_nodes=6), checkpoints)
    restarted = LocalGrid(client_app, num_nodes=6, first_node_id=500)
    resumed, resumed_weights = _train(SAMPLED, restarted, checkpoints)
    assert resumed.resumed_from == [2]
    assert [r["sampled"] for r in resumed.rounds] == [r["sampled"] for r in log.rounds]
    for name, value in weights.items():
        np.testing.assert_array_equal(value, resumed_weights[name])


def test_a_central_dp_run_with_poisson_sampling_accounts_at_the_sample_rate():
    cfg = SAMPLED.replace(rounds=2, dp="central", dp_noise=1.0, dp_clip=1.0, fraction_train=0.5)
    log, _ = _train(cfg, LocalGrid(client_app, num_nodes=6), secret=11)
    expected = [train_sample(cfg, r, secret=11) for r in (1, 2)]
    assert [r["sampled"] for r in log.rounds] == expected
    assert [r["clients_ok"] for r in log.rounds] == [len(e) for e in expected]
    unsampled = central_epsilon(
        [r["dp_noise_effective"] for r in log.rounds], cfg.replace(fraction_train=1.0)
    )
    assert 0 < log.rounds[-1]["dp_epsilon"] < unsampled


def test_a_sampled_partition_whose_node_never_said_so_is_a_failure_of_its_round():
    grid = LocalGrid(client_app, num_nodes=6, failing_partitions=[2], failing_types=[m.INFO])
    log, _ = _train(SAMPLED, grid)
    rounds = [r for r in log.rounds if 2 in r["sampled"]]
    assert rounds  # the seed samples partition 2 at least once in three rounds
    for row in rounds:
        lost = [f for f in row["clients_failed"] if f["partition_id"] == 2]
        assert lost and "no node answered query.info" in lost[0]["reason"]
        assert row["clients_ok"] == 2
