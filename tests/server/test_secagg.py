"""Secure aggregation (SecAgg+): the server gets the survivors' mean, and never one update."""

import numpy as np
import pytest

from fedge.client.app import app as client_app
from fedge.core import messages as m
from fedge.core import secagg_grid as sg
from fedge.core.config import ConfigError, RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import build_federation
from fedge.core.records import model_spec
from fedge.core.training import get_weights
from fedge.server.nodes import FederationError, Nodes
from fedge.server.secagg import max_weight
from fedge.server.training_loop import RoundLoop, train_teacher
from tests.flower_local import LocalGrid

CFG = RunConfig(
    clients=10, rounds=1, partition="iid", teacher="linear", local_epochs=1, batch_size=32,
    dropout_fraction=0.2, norm_outlier_factor=0.0,
)  # fmt: skip


def _train(cfg: RunConfig, grid: LocalGrid | None = None):
    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, cfg.seed, cfg.teacher)
    grid = grid or LocalGrid(client_app, num_nodes=cfg.clients)
    spec = model_spec(fed.dataset.preprocessing, 10)
    loop = RoundLoop(Nodes(), sampling_secret=7)  # central DP's Poisson sample: the server's
    log = train_teacher(grid, cfg, teacher, fed.server.test, spec, loop=loop)
    return get_weights(teacher), log, grid


@pytest.mark.parametrize("shares", [0, 5])  # every node, or a ring of 5 (SecAgg+)
def test_two_dropped_after_key_sharing_the_aggregate_is_fedavg_over_the_survivors(shares):
    secure, log, grid = _train(CFG.replace(secure_aggregation="secagg+", secagg_shares=shares))
    plain, plain_log, _ = _train(CFG)
    row = log.rounds[0]
    assert row["clients_ok"] == plain_log.rounds[0]["clients_ok"] == 8
    assert row["secagg"] == {
        "asked": 10, "keys": 10, "keyed_ahead": 0, "shared": 10, "masked": 8, "recovered": 2
    }  # fmt: skip
    dropped = sorted(f["node_id"] - 100 for f in row["clients_failed"])  # LocalGrid: 100 + pid
    assert dropped == sorted(f["node_id"] - 100 for f in plain_log.rounds[0]["clients_failed"])
    assert all("secagg collect" in f["reason"] for f in row["clients_failed"])
    # within the quantization error: 8 values each off by < 2 clip / T, over the total weight
    sizes = [len(r) for r in _survivor_sizes(CFG, dropped)]
    quantum = 2 * sg.clip(CFG) / sg.levels(CFG)
    bound = 8 * quantum / (sum(sizes) / max_weight(CFG))
    for name, value in plain.items():
        assert np.abs(secure[name] - value).max() <= bound + 1e-6, name
    assert not all(np.array_equal(secure[k], plain[k]) for k in plain)  # really a different path
    stage = [msg.content.config_records[m.SECAGG] for msg in grid.sent if m.SECAGG in msg.content]
    groups = [sum(k.isdigit() for k in r) for r in stage if r.get("stage") == "share_keys"]
    assert groups == [shares or 10] * 10  # each node's keys go to its share group only
    # every train message the server sent asked for a masked reply (the replies: next test)
    trains = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN]
    assert trains and all(m.SECAGG in msg.content.config_records for msg in trains)


def _survivor_sizes(cfg: RunConfig, dropped: list[int]) -> list[np.ndarray]:
    from fedge.core.partition import client_data

    fed = build_federation(cfg)
    return [client_data(fed, p, cfg).train.y for p in range(cfg.clients) if p not in dropped]


def test_no_train_reply_holds_an_unmasked_update():
    cfg = CFG.replace(secure_aggregation="secagg+")
    grid = LocalGrid(client_app, num_nodes=cfg.clients)
    seen = []
    send = grid.send_and_receive

    def spy(messages, *, timeout=None):
        replies = send(messages, timeout=timeout)
        seen.extend(r for r in replies if not r.has_error())
        return replies

    grid.send_and_receive = spy
    _train(cfg, grid)
    train_replies = [r for r in seen if r.metadata.message_type == m.TRAIN]
    assert len(train_replies) >= 8
    for reply in train_replies:
        assert m.ARRAYS not in reply.content.array_records
        assert set(reply.content.metric_records[m.METRICS]) == {m.PARTITION_ID}
    masked = [r.content.array_records for r in train_replies]
    assert all(m.SECAGG_MASKED not in records for records in masked)  # dropped once summed


def test_too_few_survivors_fail_the_round_with_the_reason():
    cfg = CFG.replace(secure_aggregation="secagg+", dropout_fraction=0.5, secagg_threshold=6)
    with pytest.raises(FederationError, match="fewer than secagg-threshold=6"):
        _train(cfg)  # every round lost: the run says why


def test_secure_aggregation_refuses_what_needs_each_update():
    for kwargs, match in (
        ({"aggregation": "median"}, "aggregation 'median' needs them one by one"),
        ({"teacher_mode": "ensemble"}, "teacher-mode 'ensemble'"),
        ({"dp": "central"}, "got dp-clipping 'server'"),  # the server never sees an update
        (
            {"dp": "central", "dp_clipping": "client", "dp_clip_mode": "adaptive"},
            "allowed with secagg\\+: dp-clipping client, dp-clip-mode fixed",
        ),
        ({"secagg_threshold": 5}, "allowed 6 to 10"),  # exactly half is not a majority
        ({"secagg_threshold": 11}, "allowed 6 to 10"),
        ({"secagg_quantization": 1 << 31}, "below 2\\^31"),
        ({"secagg_quantization": 1}, "allowed: 0 \\(the mode's default\\) or >= 2"),
        ({"secagg_modulus": 1 << 24}, "cannot hold the sum of 10"),
        ({"update_compression": "topk"}, "allowed with secagg\\+: update-compression none or int8"),
        (
            {"update_compression": "int8", "secagg_quantization": 1 << 16},
            "int8 update is masked on the 8-bit grid",
        ),
        ({"update_compression": "int8", "secagg_modulus": 2048}, "allowed secagg-modulus > 2550"),
    ):
        with pytest.raises(ConfigError, match=match):
            RunConfig(clients=10, secure_aggregation="secagg+", **kwargs)


@pytest.mark.parametrize("fraction", [1.0, 0.6])  # every client, or Poisson sampling
def test_central_dp_noises_the_secure_sum_as_it_noises_the_plain_one(fraction):
    # Each client clips its own update (Flower's fixedclipping_mod) before it is masked; the
    # server unmasks the survivors' unweighted sum, divides it by the clients it expected and
    # adds the noise. Without noise: plain central DP's aggregate within the quantization
    # error; with it: the same noise scale.
    base = CFG.replace(
        dp="central", dp_clipping="client", dp_clip=0.05, dp_noise=0.0, fraction_train=fraction
    )
    secure, log, _ = _train(base.replace(secure_aggregation="secagg+"))
    plain, plain_log, _ = _train(base)
    start = get_weights(build_teacher((1, 8, 8), 10, base.seed, base.teacher))
    assert log.rounds[0]["clients_ok"] == plain_log.rounds[0]["clients_ok"]
    assert log.rounds[0]["sampled"] == plain_log.rounds[0]["sampled"]
    survivors = log.rounds[0]["clients_ok"]
    bound = survivors * 2 * sg.clip(base) / sg.levels(base) / survivors
    moved = 0.0
    for name, value in plain.items():
        assert np.abs(secure[name] - value).max() <= bound + 1e-6, name
        moved += float(((value - start[name]) ** 2).sum())
    expected = 10 * fraction  # the fixed denominator: the clipped sum over the expected count
    assert np.sqrt(moved) <= base.dp_clip * survivors / expected + 1e-4
    noisy, _, _ = _train(base.replace(secure_aggregation="secagg+", dp_noise=1.0))
    noise = np.concatenate([(noisy[k] - secure[k]).ravel() for k in secure])
    assert np.std(noise) == pytest.approx(1.0 * base.dp_clip / expected, rel=0.1)


def test_a_clipping_range_that_cannot_hold_the_update_masks_nothing_and_says_so():
    cfg = CFG.replace(secure_aggregation="secagg+", dropout_fraction=0.0, secagg_clip=1e-4)
    with pytest.raises(FederationError, match="no node sent a masked update"):
        _train(cfg)


@pytest.mark.parametrize("codec", ["none", "int8"])  # the model masked, or its int8 update
def test_the_students_rounds_are_aggregated_securely_too(codec):
    import copy

    from fedge.core.federate import FederateConfig
    from fedge.core.models import build_student
    from fedge.core.partition import client_data
    from fedge.core.training import weights_sha256
    from fedge.server.student_rounds import flower_trainer

    cfg = CFG.replace(dropout_fraction=0.0, kd_source="both", student="deep-tiny")
    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, cfg.seed, cfg.teacher)
    grid = LocalGrid(client_app, num_nodes=cfg.clients)
    spec = model_spec(fed.dataset.preprocessing, 10)
    train_teacher(grid, cfg, teacher, fed.server.test, spec)  # the clients keep its logits
    sha = weights_sha256(get_weights(teacher))
    start = build_student((1, 8, 8), 10, "deep-tiny", seed=0)
    rounds = FederateConfig("deep-tiny", 1, 1, 0.02, 0.5, 4.0, False, 32)
    trained = {}
    for mode in ("off", "secagg+"):
        mine = cfg.replace(secure_aggregation=mode, update_compression=codec)
        if mode == "off":
            mine = mine.replace(update_compression="none")  # plain FedAvg, uncompressed
        model, summary = flower_trainer(grid, mine, spec, sha, fed.server.test)(
            copy.deepcopy(start), rounds
        )
        trained[mode] = get_weights(model)
        assert summary.rounds[0]["clients_ok"] == 10
    assert summary.rounds[0]["secagg"]["masked"] == 10
    bound = 1e-5  # 2^22 levels: the masked model is exact to float32's noise
    if codec == "int8":  # each node under one step of the 8-bit grid, over the weight share
        secure = cfg.replace(secure_aggregation="secagg+", update_compression=codec)
        share = sum(len(client_data(fed, p, cfg).train) for p in range(10)) / max_weight(cfg)
        bound = 10 * (2 * sg.clip(secure) / sg.levels(secure)) / share
    errors = [float(np.abs(trained["secagg+"][k] - v).max()) for k, v in trained["off"].items()]
    assert max(errors) <= bound
    assert codec == "none" or max(errors) > 0  # int8: really rounded to 8 bits
    sent = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN_STUDENT]
    assert any(m.SECAGG in msg.content.config_records for msg in sent)


def test_a_node_refuses_a_threshold_under_half_its_shares():
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

    grid = LocalGrid(client_app, num_nodes=3)
    setup = {
        "round": 1, "kind": m.TRAIN, Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 10,
        Key.SHARE_NUMBER: 10, Key.THRESHOLD: 4, Key.CLIPPING_RANGE: 8.0,
        Key.TARGET_RANGE: 1 << 22, Key.MOD_RANGE: 1 << 32, Key.MAX_WEIGHT: 100.0,
    }  # fmt: skip
    msg = Message(
        RecordDict({m.SECAGG: ConfigRecord(setup)}), dst_node_id=100, message_type=m.SECAGG_QUERY
    )
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "threshold 4 is not over half of 10" in reply.error.reason
    setup[Key.THRESHOLD] = 6
    msg = Message(
        RecordDict({m.SECAGG: ConfigRecord(setup)}), dst_node_id=100, message_type=m.SECAGG_QUERY
    )
    (reply,) = grid.send_and_receive([msg])
    assert not reply.has_error() and Key.PUBLIC_KEY_1 in reply.content.config_records[m.SECAGG]


class TamperingGrid(LocalGrid):
    """A grid on which one node's replies of one SecAgg stage are replaced by `tamper(reply)`."""

    def __init__(self, stage: str, tamper, node: int = 104, **kwargs) -> None:
        super().__init__(client_app, **kwargs)
        self.stage, self.tamper, self.node = stage, tamper, node

    def _handle(self, msg):
        reply = super()._handle(msg)
        record = msg.content.config_records.get(m.SECAGG)
        if msg.metadata.dst_node_id == self.node and record and record["stage"] == self.stage:
            self.tamper(reply)
        return reply


def _garbage_keys(reply):
    record = reply.content.config_records[m.SECAGG]
    record["pk1"], record["pk2"] = b"not a key", b"nor this"


def _garbage_vector(reply):
    from flwr.app import Array

    masked = reply.content.array_records[m.SECAGG_MASKED]
    first = next(iter(masked))
    masked[first] = Array(np.full(3, -5, dtype=np.int64))  # wrong shape, out of range


@pytest.mark.parametrize(
    ("stage", "tamper", "where"),
    [
        ("setup", _garbage_keys, "secagg setup"),
        ("collect_masked_vectors", _garbage_vector, "collect"),
    ],
)
def test_a_malformed_reply_fails_that_node_only(stage, tamper, where):
    cfg = CFG.replace(secure_aggregation="secagg+", dropout_fraction=0.0)
    grid = TamperingGrid(stage, tamper, num_nodes=cfg.clients)
    secure, log, _ = _train(cfg, grid)
    row = log.rounds[0]
    assert row["clients_ok"] == 9 and row["skipped"] is None
    (failed,) = row["clients_failed"]
    assert failed["node_id"] == 104 and where in failed["reason"]
    assert all(np.isfinite(v).all() for v in secure.values())
