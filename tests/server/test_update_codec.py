"""Compressed training traffic through the real ClientApp mod and the server's decoding."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.serde import message_to_proto

from fedge.client.app import app as client_app
from fedge.client.update_codec import RESIDUAL, ROUND
from fedge.core import messages as m
from fedge.core.config import ConfigError
from fedge.core.records import record_to_weights
from fedge.server.update_codec import decode_updates
from tests.flower_local import LocalGrid
from tests.server.test_robust import SIGNFLIP, _train

CLEAN = SIGNFLIP.replace(byzantine_fraction=0.0)


@pytest.mark.slow  # federations trained to compare accuracy: with the e2e tests
def test_int8_updates_train_as_well_as_fp32_for_a_quarter_of_the_uplink():
    plain, int8 = _train(CLEAN), _train(CLEAN.replace(update_compression="int8"))
    assert abs(int8.rounds[-1]["accuracy"] - plain.rounds[-1]["accuracy"]) < 0.03
    ratio = sum(r["uplink_bytes"] for r in plain.rounds) / sum(
        r["uplink_bytes"] for r in int8.rounds
    )
    assert 3.5 < ratio < 4.1
    assert [r["downlink_bytes"] for r in plain.rounds] == [r["downlink_bytes"] for r in int8.rounds]


def test_the_byte_counts_are_the_serialized_messages():
    grid = LocalGrid(client_app, num_nodes=5)
    log = _train(CLEAN.replace(rounds=1, downlink_compression="int8"), grid)
    sent = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN]
    assert log.rounds[0]["downlink_bytes"] == sum(message_to_proto(x).ByteSize() for x in sent)
    plain = _train(CLEAN.replace(rounds=1))
    assert plain.rounds[0]["downlink_bytes"] > 3.5 * log.rounds[0]["downlink_bytes"]
    # the clients trained the int8 model they got, as well as the fp32 one
    assert abs(log.rounds[0]["accuracy"] - plain.rounds[0]["accuracy"]) < 0.05


@pytest.mark.slow  # federations trained to compare accuracy: with the e2e tests
def test_topk_int8_with_error_feedback_still_learns():
    grid = LocalGrid(client_app, num_nodes=5)
    log = _train(CLEAN.replace(update_compression="topk+int8", topk_ratio=0.05), grid)
    # Each node kept what compression left out of its last update, stamped with that round.
    key = RESIDUAL + m.TRAIN
    for context in grid.contexts.values():
        left = context.state.array_records[key]
        assert any(np.abs(a.numpy()).sum() > 0 for a in left.values())
        assert context.state.config_records[key + ROUND]["round"] == log.rounds[-1]["round"]
    off = LocalGrid(client_app, num_nodes=5)
    _train(CLEAN.replace(rounds=1, update_compression="topk", error_feedback=False), off)
    assert all(key not in c.state.array_records for c in off.contexts.values())
    plain_uplink = _train(CLEAN.replace(rounds=1)).rounds[0]["uplink_bytes"]
    assert plain_uplink / log.rounds[0]["uplink_bytes"] > 8
    assert log.rounds[-1]["accuracy"] > 0.5


@pytest.mark.slow  # federations trained to compare accuracy: with the e2e tests
def test_a_sign_flip_attacker_is_still_outvoted_under_int8_updates():
    robust = _train(SIGNFLIP.replace(aggregation="median", update_compression="int8"))
    broken = _train(SIGNFLIP.replace(update_compression="int8"))
    assert robust.rounds[-1]["accuracy"] > 0.7 and broken.rounds[-1]["accuracy"] < 0.2


def test_an_update_that_does_not_decode_is_rejected_not_aggregated():
    from tests.server.test_robust import _reply

    cfg = CLEAN.replace(update_compression="int8")
    base = {"w": np.zeros(20, dtype=np.float32)}
    good, bad = _reply(np.zeros(20), 0), _reply(np.zeros(20), 1)
    good.content[m.ARRAYS] = ArrayRecord(
        {"w|q": Array(np.ones(20, np.int8)), "w|s": Array(np.array([0.5], np.float32))}
    )
    replies = {1: good, 2: bad}  # `bad` still carries plain float arrays
    rejected = decode_updates(cfg, replies, base)
    assert list(replies) == [1] and rejected[0]["partition_id"] == 1
    assert "does not decode" in rejected[0]["reason"]
    np.testing.assert_allclose(good.content.array_records[m.ARRAYS]["w"].numpy(), 0.5)


def test_compression_after_client_side_dp_clipping_is_refused():
    try:
        CLEAN.replace(update_compression="int8", dp="central", dp_noise=1.0, dp_clipping="client")
    except ConfigError as err:
        assert "dp-clipping server" in str(err)
    else:
        raise AssertionError("not refused")


DELTA = CLEAN.replace(update_compression="topk+int8", topk_ratio=0.05, downlink_compression="delta")


class ForgetfulGrid(LocalGrid):
    """Node 101 loses its state (a restart) before the second training round."""

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        messages = list(messages)
        trains = [x for x in self.sent if x.metadata.message_type == m.TRAIN]
        if messages and messages[0].metadata.message_type == m.TRAIN and len(trains) == 5:
            self.contexts[101].state = RecordDict()
        return super().send_and_receive(messages, timeout=timeout)


def _train_delta(cfg, grid):
    """Train like _train; the server's side of the delta downlink too."""
    from fedge.core.models import build_teacher
    from fedge.core.partition import build_federation
    from fedge.core.records import model_spec
    from fedge.server.nodes import Nodes
    from fedge.server.training_loop import RoundLoop, train_teacher

    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, seed=cfg.seed)
    loop = RoundLoop(Nodes())
    spec = model_spec(fed.dataset.preprocessing, 10)
    log = train_teacher(grid, cfg, teacher, fed.server.test, spec, loop=loop)
    return log, loop.downlink


def test_the_delta_downlink_keeps_node_views_identical_to_the_servers():
    grid = ForgetfulGrid(client_app, num_nodes=5)
    log, chain = _train_delta(DELTA, grid)
    key = m.STATE_VIEW + m.TRAIN
    # A node whose state is lost cannot apply the change: it fails that round, then gets the
    # full int8 model (off the chain); the other four hold the server's view bit for bit.
    failed = [[f["partition_id"] for f in r["clients_failed"]] for r in log.rounds]
    assert failed == [[], [1], []]
    assert "does not hold the model" in log.rounds[1]["clients_failed"][0]["reason"]
    assert key not in grid.contexts[101].state.array_records
    for node in (100, 102, 103, 104):
        state = grid.contexts[node].state
        assert state.config_records[key + ROUND]["view"] == chain.view_id
        held = record_to_weights(state.array_records[key])
        for name, value in chain.view.items():
            np.testing.assert_array_equal(held[name], value)
    # Round 1 is the int8 model to all, round 2 the coded change to all five; round 3 the
    # change to four and the int8 model to the one that lost it.
    int8 = _train(DELTA.replace(downlink_compression="int8"))
    down, full = [r["downlink_bytes"] for r in log.rounds], int8.rounds[0]["downlink_bytes"]
    assert abs(down[0] - full) < 0.01 * full and down[1] < full / 5
    assert abs(down[2] - (full / 5 + down[1] * 4 / 5)) < 0.05 * full / 5
    assert log.rounds[-1]["accuracy"] > int8.rounds[-1]["accuracy"] - 0.05


def test_a_node_whose_update_was_rejected_leaves_the_chain_and_is_resynced():
    """A view that diverged (same id, other values) makes updates the server rejects: such a
    node must get the full model next round, not another change it cannot apply."""
    from fedge.server.update_codec import DownlinkChain, encode_downlink, settle_chain
    from tests.server.test_robust import _reply

    chain = DownlinkChain(view={"w": np.zeros(4, np.float32)}, view_id=7, sent={1, 2, 3})
    replies = {n: _reply(np.zeros(4), n) for n in (1, 2, 3)}
    settle_chain(chain, replies, rejected={2})
    assert chain.holders == {1, 3}
    grid = LocalGrid(client_app, num_nodes=3)
    messages = [grid.create_message(RecordDict(), m.TRAIN, n, "") for n in (1, 2, 3)]
    weights = ArrayRecord({"w": Array(np.ones(4, np.float32))})
    encode_downlink(DELTA, messages, weights, chain)
    kinds = {
        msg.metadata.dst_node_id: msg.content.config_records[m.DOWNLINK]["kind"] for msg in messages
    }
    assert kinds[2] == m.DOWNLINK_FULL and kinds[1] == kinds[3] == m.DOWNLINK_DELTA


def test_delta_downlink_needs_an_update_codec():
    try:
        CLEAN.replace(downlink_compression="delta")
    except ConfigError as err:
        assert "update-compression int8 | topk | topk+int8" in str(err)
    else:
        raise AssertionError("not refused")


def test_an_int8_downlink_loses_nothing_of_the_servers_model():
    """Clients that do not move send back the int8 model; the server keeps its fp32 one."""
    from fedge.core.models import build_teacher
    from fedge.core.partition import build_federation
    from fedge.core.records import model_spec
    from fedge.core.training import get_weights
    from fedge.server.training_loop import train_teacher

    cfg = CLEAN.replace(rounds=1, lr=1e-12, downlink_compression="int8")
    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, seed=0)
    before = get_weights(teacher)
    grid = LocalGrid(client_app, num_nodes=cfg.clients)
    train_teacher(grid, cfg, teacher, fed.server.test, model_spec(fed.dataset.preprocessing, 10))
    after = get_weights(teacher)
    worst = max(float(np.abs(after[k] - before[k]).max()) for k in before)
    step = float(np.abs(before["classifier.0.weight"]).max()) / 127  # one int8 step
    assert worst < step / 100  # not q(x): that would be up to half a step off


def test_under_sampling_the_delta_chain_restarts_instead_of_shrinking():
    cfg = DELTA.replace(clients=6, fraction_train=0.5, rounds=4, byzantine_fraction=0.0)
    grid = LocalGrid(client_app, num_nodes=6)
    log, chain = _train_delta(cfg, grid)
    assert all(not r["clients_failed"] for r in log.rounds)  # nobody was sent a stale change
    key = m.STATE_VIEW + m.TRAIN
    assert 2 * len(chain.holders) >= 3  # at least half of the last round's three nodes
    # the nodes the server counts on hold its view, bit for bit
    for node in chain.holders:
        state = grid.contexts[node].state
        assert state.config_records[key + ROUND]["view"] == chain.view_id
        held = record_to_weights(state.array_records[key])
        for name, value in chain.view.items():
            np.testing.assert_array_equal(held[name], value)
