"""Central and local DP: noise really applied, clipping really done, epsilon honestly counted."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedge.client.app import app as client_app
from fedge.core import messages as m
from fedge.core.config import ConfigError, RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import build_federation, client_data
from fedge.core.records import model_spec, record_to_weights
from fedge.core.sampling import train_size
from fedge.privacy import central
from fedge.privacy.accountant import epsilon
from fedge.privacy.central import central_epsilon, central_noise
from fedge.privacy.dp_sgd import plan
from fedge.server.strategy import make_strategy
from fedge.server.training_loop import train_teacher
from tests.flower_local import LocalGrid, set_task_identity

START = np.zeros(50, dtype=np.float32)


def _reply(value: np.ndarray, partition: int, examples: int = 10) -> Message:
    set_task_identity()
    metrics = {m.NUM_EXAMPLES: examples, m.PARTITION_ID: partition, m.UNIT_WEIGHT: 1}
    content = RecordDict(
        {
            m.ARRAYS: ArrayRecord({"w": Array(value.astype(np.float32))}),
            m.METRICS: MetricRecord(metrics),
        }
    )
    return Message(content=content, dst_node_id=partition + 1, message_type="train")


def _aggregate(cfg: RunConfig, updates: list[np.ndarray], seed: int = 0) -> np.ndarray:
    """One round through the strategy fedge builds, as the training loop drives it."""
    strategy = make_strategy(cfg)
    grid = LocalGrid(client_app, num_nodes=cfg.clients)
    config = ConfigRecord({"server-round": 1})
    list(strategy.configure_train(1, ArrayRecord({"w": Array(START)}), config, grid))
    np.random.seed(seed)
    replies = [_reply(u, p, examples=10 + 5 * p) for p, u in enumerate(updates)]
    arrays, _ = strategy.aggregate_train(1, replies)
    return record_to_weights(arrays)["w"]


def _updates(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=50).astype(np.float32) for _ in range(n)]


def test_noise_zero_and_no_clipping_is_the_plain_unweighted_mean():
    cfg = RunConfig(clients=4, dp="central", dp_noise=0.0, dp_clip=1e6)
    np.testing.assert_allclose(_aggregate(cfg, _updates()), np.mean(_updates(), axis=0), atol=1e-6)
    weighted = _aggregate(RunConfig(clients=4), _updates())  # without DP: by num-examples
    assert not np.allclose(weighted, np.mean(_updates(), axis=0), atol=1e-3)


def test_central_noise_is_applied_at_the_calibrated_scale_and_follows_the_seed():
    cfg = RunConfig(clients=4, dp="central", dp_noise=2.0, dp_clip=0.5)
    clean = _aggregate(cfg.replace(dp_noise=0.0), _updates())
    a, b, again = (_aggregate(cfg, _updates(), seed) for seed in (0, 1, 0))
    assert not np.allclose(a, b) and np.array_equal(a, again)
    noise = np.concatenate([_aggregate(cfg, _updates(), s) - clean for s in range(20)])
    assert np.std(noise) == pytest.approx(2.0 * 0.5 / 4, rel=0.1)  # noise x clip / clients


# (client-side adaptive clipping needs each reply's norm bit from the real ClientApp; the
# estimator is the same class in all four wrappers)
@pytest.mark.parametrize(
    ("side", "clip_mode"), [("server", "fixed"), ("client", "fixed"), ("server", "adaptive")]
)
def test_under_poisson_sampling_the_sum_is_divided_by_the_expected_count(side, clip_mode):
    # 8 clients at q = 0.5: 4 expected. However many reply, the model moves by the sum of
    # their (clipped) updates / 4, the sensitivity the noise is calibrated to; a mean over
    # the replies would move it by sum / 2 when only 2 came (twice the calibrated step).
    cfg = RunConfig(clients=8, dp="central", dp_noise=0.0, dp_clip=1e6, fraction_train=0.5)
    cfg = cfg.replace(dp_clipping=side, dp_clip_mode=clip_mode)
    assert train_size(cfg) == 4
    for replies in (2, 4, 6):
        got = _aggregate(cfg, _updates(replies))
        np.testing.assert_allclose(got, np.sum(_updates(replies), axis=0) / 4, atol=1e-5)
    full = cfg.replace(fraction_train=1.0, clients=4)  # everyone replies: the plain mean
    np.testing.assert_allclose(_aggregate(full, _updates()), np.mean(_updates(), axis=0), atol=1e-6)


def test_adaptive_clipping_counts_clipped_updates_over_the_expected_count_too():
    # Every update is clipped; 2 of the 4 expected clients reply: the clipped share is 2 / 4.
    cfg = RunConfig(clients=8, dp="central", dp_noise=0.0, dp_clip=1e-3, fraction_train=0.5)
    cfg = cfg.replace(dp_clip_mode="adaptive", dp_count_noise=1e-9)
    strategy = make_strategy(cfg)
    grid = LocalGrid(client_app, num_nodes=cfg.clients)
    config = ConfigRecord({"server-round": 1})
    list(strategy.configure_train(1, ArrayRecord({"w": Array(START)}), config, grid))
    strategy.aggregate_train(1, [_reply(u, p) for p, u in enumerate(_updates(2))])
    want = central.next_clipping_norm(1e-3, 0.5, cfg)
    assert strategy.clipping_norm == pytest.approx(want, rel=1e-6)
    assert want != pytest.approx(central.next_clipping_norm(1e-3, 1.0, cfg))  # over replies


@pytest.mark.parametrize("side", ["server", "client"])
def test_updates_are_clipped_to_the_norm(side):
    big = [np.full(50, 3.0, dtype=np.float32) for _ in range(4)]  # norm 21.2 each
    cfg = RunConfig(clients=4, dp="central", dp_noise=0.0, dp_clip=1.0, dp_clipping=side)
    result = _aggregate(cfg, big)
    if side == "server":
        assert np.linalg.norm(result) == pytest.approx(1.0, rel=1e-4)
    else:  # the server leaves clipping to the clients' mod: it only asks for it
        assert np.linalg.norm(result) == pytest.approx(np.linalg.norm(big[0]), rel=1e-4)


TINY = RunConfig(clients=3, rounds=1, partition="iid", local_epochs=1, batch_size=32)


def _train(cfg: RunConfig, grid: LocalGrid | None = None):
    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, seed=cfg.seed)
    grid = grid or LocalGrid(client_app, num_nodes=cfg.clients)
    log = train_teacher(
        grid, cfg, teacher, fed.server.test, model_spec(fed.dataset.preprocessing, 10)
    )
    return log, grid


def test_client_side_clipping_clips_the_update_before_it_leaves_the_node():
    cfg = TINY.replace(dp="central", dp_noise=0.0, dp_clip=0.05, dp_clipping="client")
    _, grid = _train(cfg)
    sent = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN][0]
    assert sent.content.config_records[m.CONFIG]["clipping_norm"] == 0.05
    start = record_to_weights(sent.content.array_records[m.ARRAYS])
    context = grid.contexts[sent.metadata.dst_node_id]

    def update_norm(msg: Message) -> float:
        update = record_to_weights(client_app(msg, context).content.array_records[m.ARRAYS])
        return float(np.sqrt(sum(((update[k] - start[k]) ** 2).sum() for k in start)))

    assert update_norm(sent) == pytest.approx(0.05, rel=1e-3)
    del sent.content.config_records[m.CONFIG]["clipping_norm"]  # no DP asked: no clipping
    assert update_norm(sent) > 0.1


def test_lost_clients_cost_no_privacy_and_move_the_model_less():
    # The clipped sum is divided by the 4 clients expected, so a round in which one failed
    # gives each remaining update the calibrated protection: the same epsilon.
    cfg = TINY.replace(clients=4, rounds=2, dp="central", dp_noise=3.0, dp_clip=1.0)
    full, _ = _train(cfg)
    lossy, _ = _train(cfg, LocalGrid(client_app, num_nodes=4, failing_partitions=[1]))
    assert full.rounds[-1]["dp_epsilon"] == pytest.approx(central_epsilon([3.0, 3.0], cfg))
    assert lossy.rounds[-1]["dp_noise_effective"] == 3.0
    assert lossy.rounds[-1]["dp_epsilon"] == pytest.approx(full.rounds[-1]["dp_epsilon"])


def test_a_target_epsilon_sets_the_noise_and_is_not_exceeded():
    cfg = RunConfig(rounds=10, dp="central", dp_epsilon=3.0)
    noise = central_noise(cfg)
    assert central_epsilon([noise] * 10, cfg) <= 3.0 < central_epsilon([noise * 0.97] * 10, cfg)
    with pytest.raises(
        ConfigError,
        match="dp-epsilon=1e-06 at delta=1e-05 cannot be met.*even noise multiplier 1000",
    ):
        central_noise(cfg.replace(dp_epsilon=1e-6))


def test_local_dp_clients_report_the_epsilon_of_their_own_schedule():
    cfg = TINY.replace(dp="local", dp_noise=1.5, dp_clip=1.0)
    log, _ = _train(cfg)
    fed = build_federation(cfg)
    expected = max(
        plan(len(client_data(fed, p, cfg).train), cfg).epsilon_after(1, cfg) for p in range(3)
    )
    assert log.rounds[0]["dp_epsilon"] == pytest.approx(expected)
    sizes = [len(client_data(fed, p, cfg).train) for p in range(3)]
    steps = max(-(-n // 32) for n in sizes)
    assert expected == pytest.approx(epsilon(1.5, 1 / steps, steps, 1e-5), rel=0.2)


def test_local_dp_noise_changes_the_model():
    quiet, _ = _train(TINY.replace(dp="local", dp_noise=0.0, dp_clip=1e6))
    loud, _ = _train(TINY.replace(dp="local", dp_noise=50.0, dp_clip=1.0))
    plain, _ = _train(TINY)
    assert loud.rounds[0]["accuracy"] < plain.rounds[0]["accuracy"] - 0.2
    assert quiet.rounds[0]["dp_epsilon"] == float("inf")


def test_dp_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="dp central needs the plain mean"):
        RunConfig(dp="central", aggregation="median")
    with pytest.raises(ConfigError, match="dp local cannot use strategy 'fedprox'"):
        RunConfig(dp="local", strategy="fedprox")
    with pytest.raises(ConfigError, match="teacher-mode 'ensemble'"):
        RunConfig(dp="central", teacher_mode="ensemble")
    with pytest.raises(ConfigError, match="unknown dp 'strong'"):
        RunConfig(dp="strong")


def _adaptive_round(cfg: RunConfig, updates: list[np.ndarray]) -> tuple[np.ndarray, float, float]:
    """One round through fedge's adaptive wrapper: (aggregate, norm before, norm after)."""
    strategy = make_strategy(cfg)
    grid = LocalGrid(client_app, num_nodes=cfg.clients)
    list(strategy.configure_train(1, ArrayRecord({"w": Array(START)}), ConfigRecord({}), grid))
    before = strategy.clipping_norm
    np.random.seed(0)
    arrays, _ = strategy.aggregate_train(1, [_reply(u, p) for p, u in enumerate(updates)])
    return record_to_weights(arrays)["w"], before, strategy.clipping_norm


ADAPTIVE = RunConfig(
    clients=4, dp="central", dp_clip_mode="adaptive", dp_noise=0.0, dp_count_noise=1e-9
)


def test_adaptive_norm_follows_the_unclipped_quantile():
    """Andrew et al.: all updates clipped -> the norm grows; none clipped -> it shrinks."""
    big = [np.full(50, 3.0, dtype=np.float32) for _ in range(4)]  # norm 21.2
    mean, before, after = _adaptive_round(ADAPTIVE.replace(dp_clip=1.0), big)
    assert np.linalg.norm(mean) == pytest.approx(1.0, rel=1e-4)  # clipped at the old norm
    assert after == pytest.approx(before * np.exp(0.2 * 0.5))
    _, before, after = _adaptive_round(ADAPTIVE.replace(dp_clip=100.0), big)
    assert after == pytest.approx(before * np.exp(-0.2 * 0.5))


def test_adaptive_noise_is_calibrated_to_the_norm_the_round_clipped_at():
    """The norm shrinks in this round; the noise must still match the norm updates were
    clipped to (Flower's wrapper alone would use the new, smaller norm)."""
    cfg = ADAPTIVE.replace(dp_clip=100.0, dp_noise=0.01, dp_count_noise=0.01, dp_clip_lr=2.0)
    small = [np.full(50, 0.01, dtype=np.float32) for _ in range(4)]
    noises, after = [], []
    for seed in range(20):
        strategy = make_strategy(cfg)
        grid = LocalGrid(client_app, num_nodes=4)
        list(strategy.configure_train(1, ArrayRecord({"w": Array(START)}), ConfigRecord({}), grid))
        np.random.seed(seed)
        arrays, _ = strategy.aggregate_train(1, [_reply(u, p) for p, u in enumerate(small)])
        noises.append(record_to_weights(arrays)["w"] - 0.01)
        after.append(strategy.clipping_norm)
    assert np.mean(after) == pytest.approx(100.0 * np.exp(-2.0 * 0.5), rel=0.01)  # fell a lot
    on_model = central.model_noise(0.01, 0.01)
    assert np.std(np.concatenate(noises)) == pytest.approx(on_model * 100.0 / 4, rel=0.1)


def test_adaptive_accounting_counts_model_and_count_noise():
    cfg = RunConfig(clients=10, dp="central", dp_clip_mode="adaptive", dp_noise=2.0)
    count_std = central.count_noise(cfg, 2.0)
    assert count_std == 2.0  # clients / 20 = 0.5 would leave no finite model noise
    with pytest.raises(ConfigError, match="dp-count-noise=0.5 is too small"):
        central_noise(cfg.replace(dp_count_noise=0.5))
    with pytest.raises(ConfigError, match="needs dp central"):
        RunConfig(dp="local", dp_clip_mode="adaptive")


def test_adaptive_client_side_clipping_runs_through_the_real_clientapp():
    cfg = TINY.replace(
        rounds=2, dp="central", dp_noise=0.0, dp_clip=0.01, dp_clipping="client",
        dp_clip_mode="adaptive",
    )  # fmt: skip
    log, grid = _train(cfg)
    norms = [row["dp_clipping_norm"] for row in log.rounds]
    assert norms[0] > 0.01 and norms[1] > norms[0]  # every update was clipped: the norm grows
    sent = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN]
    assert sent[-1].content.config_records[m.CONFIG]["clipping_norm"] == pytest.approx(norms[0])
