"""Robust aggregation and injected faults, through Flower's strategies and the real ClientApp."""

import threading

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedge.client.app import app as client_app
from fedge.core import faults
from fedge.core import messages as m
from fedge.core.config import ConfigError, RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import build_federation
from fedge.core.records import model_spec, record_to_weights
from fedge.server.strategy import make_strategy
from fedge.server.training_loop import FederationError, train_teacher
from tests.flower_local import LocalGrid, set_task_identity


def _reply(value: np.ndarray, partition: int) -> Message:
    set_task_identity()
    content = RecordDict(
        {
            m.ARRAYS: ArrayRecord({"w": Array(value.astype(np.float32))}),
            m.METRICS: MetricRecord({m.NUM_EXAMPLES: 10, m.PARTITION_ID: partition}),
        }
    )
    return Message(content=content, dst_node_id=partition + 1, message_type="train")


@pytest.mark.parametrize(
    ("aggregation", "robust"),
    [
        ("fedavg", False),
        ("median", True),
        ("trimmed-mean", True),
        ("krum", True),
        ("multi-krum", True),
        ("bulyan", True),
    ],
)
def test_each_aggregation_rule_is_the_one_used(aggregation, robust):
    """Seven honest updates near 1.0 and one sign-flipped at -50: only fedavg is dragged off."""
    cfg = RunConfig(clients=8, aggregation=aggregation, num_malicious=1)
    rng = np.random.default_rng(0)
    replies = [_reply(1.0 + 0.01 * rng.standard_normal(20), p) for p in range(7)]
    replies.append(_reply(np.full(20, -50.0), 7))
    arrays, _ = make_strategy(cfg).aggregate_train(1, replies)
    result = record_to_weights(arrays)["w"]
    assert bool(np.abs(result - 1.0).max() < 0.1) is robust


def test_bad_combinations_are_refused_with_the_rule():
    with pytest.raises(ConfigError, match="needs clients >= 4 x num-malicious \\+ 3 = 11"):
        RunConfig(clients=10, aggregation="bulyan", num_malicious=2)
    with pytest.raises(ConfigError, match="cannot be combined with strategy 'fedadam'"):
        RunConfig(aggregation="median", strategy="fedadam")
    with pytest.raises(ConfigError, match="unknown byzantine-mode 'nope'"):
        RunConfig(byzantine_mode="nope")


SIGNFLIP = RunConfig(clients=5, rounds=3, partition="iid", local_epochs=3, byzantine_fraction=0.2)


def _train(cfg: RunConfig, grid=None):
    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, seed=cfg.seed)
    spec = model_spec(fed.dataset.preprocessing, 10)
    grid = grid or LocalGrid(client_app, num_nodes=cfg.clients)
    return train_teacher(grid, cfg, teacher, fed.server.test, spec)


def test_sign_flip_clients_break_fedavg_but_not_median():
    broken = _train(SIGNFLIP.replace(rounds=2))
    robust = _train(SIGNFLIP.replace(rounds=2, aggregation="median"))
    assert broken.rounds[-1]["accuracy"] < 0.2  # chance is 0.1; clean reaches about 0.9
    assert robust.rounds[-1]["accuracy"] > 0.7
    assert broken.rounds[0]["injected"]["byzantine"] == sorted(
        faults.byzantine_partitions(SIGNFLIP)
    )


def test_gaussian_attackers_are_rejected_by_the_norm_rule():
    cfg = SIGNFLIP.replace(byzantine_mode="gaussian")
    log = _train(cfg)
    attacker = sorted(faults.byzantine_partitions(cfg))
    assert [r["partition_id"] for r in log.rejected] == attacker * 3
    assert all(r["clients_ok"] == 4 for r in log.rounds) and log.rounds[-1]["accuracy"] > 0.7


def test_dropped_clients_fail_their_round_and_the_round_goes_on():
    cfg = SIGNFLIP.replace(byzantine_fraction=0.0, dropout_fraction=0.4, rounds=2)
    log = _train(cfg)
    for row in log.rounds:
        failed = sorted(
            f["reason"].split("partition ")[1].split(" ")[0] for f in row["clients_failed"]
        )
        assert [int(p) for p in failed] == row["injected"]["dropped"]
        assert len(row["injected"]["dropped"]) == 2 and row["clients_ok"] == 3
        assert all("SimulatedDropoutError" in f["reason"] for f in row["clients_failed"])


class LateGrid(LocalGrid):
    """Replies from `late` partitions arrive after the round's timeout, whatever this machine's
    speed: the grid waits for every handler, then leaves theirs out, as a real grid leaves out
    what misses `timeout`. It records the timeouts the server asked for."""

    def __init__(self, *args, late: frozenset[int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.late, self.timeouts = late, []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        self.timeouts.append(timeout)
        replies = super().send_and_receive(messages, timeout=None)
        return [r for r in replies if self._partition(r) not in self.late]

    def _partition(self, reply: Message) -> int:
        node = next(m for m in self.sent if m.object_id == reply.metadata.reply_to_message_id)
        return int(self.contexts[node.metadata.dst_node_id].node_config["partition-id"])


def test_a_straggler_misses_the_round_timeout_and_is_reported():
    cfg = SIGNFLIP.replace(
        byzantine_fraction=0.0,
        straggler_fraction=0.2,
        straggler_delay=0.01,  # the grid, not a clock, makes its reply late
        round_timeout=1.5,
        rounds=1,
    )
    (straggler,) = faults.round_roles(cfg, 1).stragglers
    grid = LateGrid(client_app, num_nodes=cfg.clients, late=frozenset({straggler}))
    log = _train(cfg, grid)
    row = log.rounds[0]
    assert row["clients_ok"] == 4 and len(row["clients_failed"]) == 1
    assert row["clients_failed"][0]["reason"] == "no reply before round-timeout"
    assert row["injected"]["stragglers"] == [straggler]
    assert cfg.round_timeout in grid.timeouts  # the round waited as long as it was told to


def test_a_straggler_waits_past_the_round_timeout_by_default():
    cfg = RunConfig(straggler_fraction=0.2, round_timeout=1.5)
    assert faults.straggler_delay(cfg) > cfg.round_timeout
    assert faults.straggler_delay(cfg.replace(straggler_delay=3.0)) == 3.0


def test_too_few_live_nodes_end_the_run_with_a_clear_message():
    """The wait gives up after round-timeout instead of waiting forever (the thread's join bounds
    a hang; when exactly it gives up needs an injected clock in wait_for_nodes)."""

    class Vanishing(LocalGrid):
        def get_node_ids(self):
            return list(self.contexts) if not self.sent else []

    cfg = SIGNFLIP.replace(byzantine_fraction=0.0, rounds=2, round_timeout=1.0)
    errors: list[BaseException] = []

    def train() -> None:
        try:
            _train(cfg, Vanishing(client_app, num_nodes=cfg.clients))
        except BaseException as err:  # noqa: BLE001  (handed to the test's thread)
            errors.append(err)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    thread.join(timeout=120)  # bounds a hang, not a speed
    assert not thread.is_alive(), "still waiting for nodes"
    (error,) = errors
    assert isinstance(error, FederationError), error
    assert "only 0 of min-clients=1 nodes connected after" in str(error)


def test_roles_are_deterministic_and_have_the_asked_size():
    cfg = RunConfig(
        clients=10, byzantine_fraction=0.2, dropout_fraction=0.5, straggler_fraction=0.1
    )
    a, b = faults.round_roles(cfg, 3), faults.round_roles(cfg, 3)
    assert a == b and len(a.byzantine) == 2 and len(a.dropped) == 5 and len(a.stragglers) == 1
    assert not a.dropped & a.stragglers
    assert (
        faults.round_roles(cfg, 4).dropped != a.dropped
        or faults.round_roles(cfg, 5).dropped != a.dropped
    )


def test_poisoned_updates_are_what_each_mode_claims():
    start = {"w": np.zeros(1000, np.float32), "n": np.array(3)}
    trained = {"w": np.full(1000, 0.1, np.float32), "n": np.array(4)}
    flip = faults.poison_update(RunConfig(byzantine_scale=5.0), start, trained, seed=0)
    np.testing.assert_allclose(flip["w"], -0.5, rtol=1e-6)
    noisy = faults.poison_update(
        RunConfig(byzantine_mode="gaussian", byzantine_scale=2.0), start, trained, seed=0
    )
    assert abs(noisy["w"].std() - 2.0) < 0.2 and flip["n"] == 4 == noisy["n"]
    assert (faults.flip_labels(np.array([0, 3, 9]), 10) == [9, 6, 0]).all()
