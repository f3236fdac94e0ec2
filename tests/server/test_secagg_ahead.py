"""SecAgg+ keys made ahead: a round after an unmask has no setup exchange, and stays safe."""

from collections import defaultdict

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from fedge.core import messages as m
from tests.server.test_secagg import CFG, TamperingGrid, _train

SECURE = CFG.replace(secure_aggregation="secagg+", rounds=3)  # 2 of 10 drop in each round


def _stage_messages(grid, stage: str) -> dict[int, dict[int, ConfigRecord]]:
    """round -> node -> the SecAgg record of the `stage` messages the server sent."""
    out: dict[int, dict[int, ConfigRecord]] = defaultdict(dict)
    for msg in grid.sent:
        record = msg.content.config_records.get(m.SECAGG)
        if record is not None and record.get(Key.STAGE) == stage:
            out[int(record["round"])][msg.metadata.dst_node_id] = record
    return out


def test_only_nodes_without_keys_from_the_last_unmask_get_a_setup_and_fedavg_holds():
    secure, log, grid = _train(SECURE)
    plain, plain_log, _ = _train(SECURE.replace(secure_aggregation="off"))
    setups, shares = _stage_messages(grid, Stage.SETUP), _stage_messages(grid, Stage.SHARE_KEYS)
    assert set(setups[1]) == set(range(100, 110))
    for server_round in (2, 3):
        row, before = log.rounds[server_round - 1], log.rounds[server_round - 2]
        unmasked_last = set(range(100, 110)) - {f["node_id"] for f in before["clients_failed"]}
        assert len(unmasked_last) == 8
        assert set(setups[server_round]) == set(range(100, 110)) - unmasked_last
        assert row["secagg"]["keyed_ahead"] == 8 and row["secagg"]["keys"] == 10
        with_setup = {
            n for n, r in shares[server_round].items() if m.SECAGG_SETUP + "threshold" in r
        }
        assert with_setup == unmasked_last  # the setup values, to the nodes that had no setup
        assert row["clients_ok"] == plain_log.rounds[server_round - 1]["clients_ok"] == 8
    for name, value in plain.items():  # three rounds, 2^22 levels: FedAvg to float32's noise
        assert np.abs(secure[name] - value).max() <= 1e-4, name
    # fresh keys each round: a key published in one round never comes back in another
    published = [
        {k for r in shares[rnd].values() for v in r.values() if isinstance(v, list) for k in v}
        for rnd in (1, 2, 3)
    ]
    assert all(len(keys) == 20 for keys in published)  # two per node, all 10 nodes keyed
    assert not (published[0] & published[1] or published[1] & published[2])


def _bad_ahead_keys(reply):
    record = reply.content.config_records[m.SECAGG]
    record[m.SECAGG_AHEAD_KEYS[0]], record[m.SECAGG_AHEAD_KEYS[1]] = b"not a key", b"nor this"


def _p256_keys():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    return [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for _ in range(2)
    ]


def _other_curve_ahead_keys(reply):  # they load, but no neighbour could agree a key with them
    record = reply.content.config_records[m.SECAGG]
    record[m.SECAGG_AHEAD_KEYS[0]], record[m.SECAGG_AHEAD_KEYS[1]] = _p256_keys()


def _other_curve_setup_keys(reply):
    record = reply.content.config_records[m.SECAGG]
    record[Key.PUBLIC_KEY_1], record[Key.PUBLIC_KEY_2] = _p256_keys()


def test_setup_keys_on_another_curve_fail_that_node_only():
    cfg = SECURE.replace(dropout_fraction=0.0, rounds=1)
    grid = TamperingGrid(Stage.SETUP, _other_curve_setup_keys, num_nodes=cfg.clients)
    _, log, _ = _train(cfg, grid)
    row = log.rounds[0]
    assert row["clients_ok"] == 9 and row["skipped"] is None
    (failed,) = row["clients_failed"]
    assert failed["node_id"] == 104 and "not on Flower's curve" in failed["reason"]


@pytest.mark.parametrize("tamper", [_bad_ahead_keys, _other_curve_ahead_keys])
def test_keys_ahead_that_are_not_flowers_are_not_used_the_node_sets_up_as_before(tamper):
    cfg = SECURE.replace(dropout_fraction=0.0, rounds=2)
    grid = TamperingGrid(Stage.UNMASK, tamper, num_nodes=cfg.clients)
    _, log, _ = _train(cfg, grid)
    assert set(_stage_messages(grid, Stage.SETUP)[2]) == {104}
    assert log.rounds[1]["clients_ok"] == 10 and log.rounds[1]["secagg"]["keyed_ahead"] == 9


def _share_keys(grid, node: int, setup: dict, server_round: int = 2) -> Message:
    held = {n: c.state.config_records.get(m.STATE_SECAGG_AHEAD) for n, c in grid.contexts.items()}
    values = {str(n): [r["pk1"], r["pk2"]] for n, r in held.items() if r is not None}
    if node not in held or held[node] is None:
        values[str(node)] = [b"k1" * 40, b"k2" * 40]
    record = {"round": server_round, "kind": m.TRAIN, Key.STAGE: Stage.SHARE_KEYS, **values}
    record.update({m.SECAGG_SETUP + k: v for k, v in setup.items()})
    msg = Message(
        RecordDict({m.SECAGG: ConfigRecord(record)}), dst_node_id=node, message_type=m.SECAGG_QUERY
    )
    (reply,) = grid.send_and_receive([msg])
    return reply


SETUP = {
    Key.SAMPLE_NUMBER: 10, Key.SHARE_NUMBER: 10, Key.THRESHOLD: 6, Key.CLIPPING_RANGE: 8.0,
    Key.TARGET_RANGE: 1 << 22, Key.MOD_RANGE: 1 << 26, Key.MAX_WEIGHT: 200.0,
}  # fmt: skip


def test_keys_made_ahead_serve_one_round_only_and_need_a_majority_threshold():
    _, log, grid = _train(SECURE.replace(rounds=1))  # nodes 100..109 but 2 hold keys ahead
    dropped = {f["node_id"] for f in log.rounds[0]["clients_failed"]}
    node = min(set(grid.contexts) - dropped)
    reply = _share_keys(grid, node, {**SETUP, Key.THRESHOLD: 5})
    assert reply.has_error() and "threshold 5 is not over half of 10" in reply.error.reason
    # this grid keeps a failed handler's state: the refused stage dropped the keys (Flower's
    # runtimes discard it, which leaves them unused; nothing derived from them went out)
    reply = _share_keys(grid, node, SETUP)
    assert reply.has_error() and "a node that keyed ahead" in reply.error.reason
    other = min(set(grid.contexts) - dropped - {node})
    reply = _share_keys(grid, other, SETUP)
    assert not reply.has_error()
    assert len(reply.content.config_records[m.SECAGG][Key.CIPHERTEXT_LIST]) == 6  # 7 hold keys
    reply = _share_keys(grid, other, SETUP, server_round=3)  # replayed: the keys are spent
    assert reply.has_error() and "a node that keyed ahead" in reply.error.reason
    reply = _share_keys(grid, min(dropped), SETUP)  # it never unmasked: it has no keys ahead
    assert reply.has_error() and "a node that keyed ahead" in reply.error.reason
    # a setup supersedes keys made ahead: they are dropped, never kept for a later round
    last = max(set(grid.contexts) - dropped)
    assert m.STATE_SECAGG_AHEAD in grid.contexts[last].state.config_records
    record = {"round": 2, "kind": m.TRAIN, Key.STAGE: Stage.SETUP, **SETUP}
    msg = Message(
        RecordDict({m.SECAGG: ConfigRecord(record)}), dst_node_id=last, message_type=m.SECAGG_QUERY
    )
    (reply,) = grid.send_and_receive([msg])
    assert not reply.has_error()
    assert m.STATE_SECAGG_AHEAD not in grid.contexts[last].state.config_records


@pytest.mark.parametrize("stage", [Stage.SETUP, Stage.UNMASK])
def test_setup_values_come_only_with_a_share_keys_stage(stage):
    _, log, grid = _train(SECURE.replace(rounds=1, dropout_fraction=0.0))
    record = {"round": 2, "kind": m.TRAIN, Key.STAGE: stage, **SETUP}
    record.update({m.SECAGG_SETUP + k: v for k, v in SETUP.items()})
    msg = Message(
        RecordDict({m.SECAGG: ConfigRecord(record)}), dst_node_id=100, message_type=m.SECAGG_QUERY
    )
    (reply,) = grid.send_and_receive([msg])
    assert reply.has_error() and "only a share keys stage carries them" in reply.error.reason
