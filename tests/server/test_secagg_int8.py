"""SecAgg+ with int8 updates: each node quantizes its update to 8 bits, then masks it."""

import numpy as np
import pytest

from fedge.client.app import app as client_app
from fedge.core import messages as m
from fedge.core import secagg_grid as sg
from fedge.core.config import RunConfig
from fedge.core.partition import build_federation, client_data
from fedge.server.secagg import max_weight
from tests.flower_local import LocalGrid
from tests.server.test_secagg import CFG, _train

INT8 = CFG.replace(secure_aggregation="secagg+", update_compression="int8")


def test_int8_grid_settings_follow_the_update_not_the_model():
    assert (sg.levels(INT8), sg.clip(INT8), sg.modulus(INT8)) == (255, 0.5, 4096)
    assert sg.wire_dtype(sg.modulus(INT8)) == np.uint16
    plain = CFG.replace(secure_aggregation="secagg+")
    assert (sg.levels(plain), sg.clip(plain)) == (1 << 22, 8.0)
    assert sg.modulus(plain) == 1 << 26 and sg.wire_dtype(1 << 26) == np.uint32
    poisson = RunConfig(clients=100, fraction_train=0.1, dp="central", dp_clipping="client")
    assert sg.modulus(poisson.replace(secure_aggregation="secagg+")) == 1 << 29  # all 100 may come


def test_int8_masked_aggregate_is_fedavg_over_the_survivors_within_the_8_bit_grid():
    secure, log, grid = _train(INT8)
    plain, plain_log, _ = _train(CFG)  # uncompressed, unmasked: the same two nodes drop
    row = log.rounds[0]
    assert row["clients_ok"] == plain_log.rounds[0]["clients_ok"] == 8
    assert row["secagg"]["recovered"] == 2
    dropped = {f["node_id"] - 100 for f in row["clients_failed"]}
    fed = build_federation(INT8)
    weight = sum(len(client_data(fed, p, INT8).train) for p in range(10) if p not in dropped)
    quantum = 2 * sg.clip(INT8) / sg.levels(INT8)  # one node's rounding: under one step
    bound = 8 * quantum / (weight / max_weight(INT8))
    errors = [float(np.abs(secure[k] - plain[k]).max()) for k in plain]
    assert max(errors) <= bound + 1e-6
    assert max(errors) > bound / 1000  # really rounded to 8 bits, not sent exact
    # the loss the server reports is the survivors' mean, sent scaled into the clip range
    assert row["train_loss"] == pytest.approx(plain_log.rounds[0]["train_loss"], abs=0.2)


def test_int8_masked_vectors_go_as_uint16_half_the_bytes_of_float32():
    sent: dict[str, list[np.ndarray]] = {"none": [], "int8": []}
    for mode, arrays in sent.items():
        grid = LocalGrid(client_app, num_nodes=CFG.clients)
        send = grid.send_and_receive

        def spy(messages, *, timeout=None, send=send, arrays=arrays):
            replies = send(messages, timeout=timeout)
            for r in replies:
                if not r.has_error() and m.SECAGG_MASKED in r.content.array_records:
                    masked = r.content.array_records[m.SECAGG_MASKED]
                    arrays.extend(masked[k].numpy() for k in masked)
            return replies

        grid.send_and_receive = spy
        _train(CFG.replace(secure_aggregation="secagg+", update_compression=mode), grid)
    values = sum(a.size for a in sent["int8"])
    assert values == sum(a.size for a in sent["none"]) > 0
    assert {a.dtype for a in sent["int8"]} == {np.dtype(np.uint16)}
    assert {a.dtype for a in sent["none"]} == {np.dtype(np.uint32)}
    assert sum(a.nbytes for a in sent["int8"]) == 2 * values  # float32 would be 4 a value


def test_an_update_beyond_the_clip_is_saturated_and_the_excess_carried_not_dropped():
    from fedge.client.update_codec import RESIDUAL

    cfg = INT8.replace(secagg_clip=1e-3, dropout_fraction=0.0, rounds=2)
    grid = LocalGrid(client_app, num_nodes=cfg.clients)
    _, log, _ = _train(cfg, grid)
    assert [r["clients_ok"] for r in log.rounds] == [10, 10]  # nobody dropped for its size
    assert all(not r["clients_failed"] for r in log.rounds)
    residuals = [c.state.array_records.get(RESIDUAL + m.TRAIN) for c in grid.contexts.values()]
    assert all(r is not None for r in residuals)  # each node keeps what the clip cut
    largest = max(float(np.abs(a.numpy()).max()) for r in residuals for a in r.values())
    assert largest > 1e-3  # the excess, not a rounding error
    roomy = INT8.replace(dropout_fraction=0.0)  # the default clip holds a round of this model
    grid = LocalGrid(client_app, num_nodes=roomy.clients)
    _train(roomy, grid)
    assert all(RESIDUAL + m.TRAIN not in c.state.array_records for c in grid.contexts.values())


def test_the_modulus_holds_every_node_that_answers_not_only_the_configured_clients():
    # 17 nodes for 10 clients (7 share a partition): all 17 are asked, masked and summed, so
    # a modulus sized for 10 (4,096 > 10 x 255) would wrap the sum (17 x 255 = 4,335).
    from tests.flower_local import node_context

    cfg = INT8.replace(dropout_fraction=0.0)
    grids = []
    for _ in range(2):
        grid = LocalGrid(client_app, num_nodes=17)
        grid.contexts = {100 + i: node_context(100 + i, i % 10, 10) for i in range(17)}
        grids.append(grid)
    secure, log, _ = _train(cfg, grids[0])
    plain, plain_log, _ = _train(CFG.replace(dropout_fraction=0.0), grids[1])
    assert log.rounds[0]["clients_ok"] == plain_log.rounds[0]["clients_ok"] == 17
    setups = [
        msg.content.config_records[m.SECAGG]
        for msg in grids[0].sent
        if m.SECAGG in msg.content.config_records
        and msg.content.config_records[m.SECAGG].get("stage") == "setup"
    ]
    assert {r["mod_range"] for r in setups} == {8192}  # the smallest power of two > 17 x 255
    errors = [float(np.abs(secure[k] - plain[k]).max()) for k in plain]
    assert max(errors) < 2 * sg.clip(INT8) / sg.levels(INT8) * 17 / 10  # no wrapped sum
    with pytest.raises(Exception, match="cannot hold the sum of 17 nodes"):
        _train(cfg.replace(secagg_modulus=4096), LocalGrid(client_app, num_nodes=17))


def test_a_well_formed_vector_of_the_wrong_type_fails_that_node_only():
    from flwr.app import Array

    from tests.server.test_secagg import TamperingGrid

    def widen(reply):  # the same values, in range and of the right shapes, as int64
        masked = reply.content.array_records[m.SECAGG_MASKED]
        for key in list(masked):
            masked[key] = Array(masked[key].numpy().astype(np.int64))

    cfg = INT8.replace(dropout_fraction=0.0)
    grid = TamperingGrid("collect_masked_vectors", widen, num_nodes=cfg.clients)
    secure, log, _ = _train(cfg, grid)
    row = log.rounds[0]
    assert row["clients_ok"] == 9
    (failed,) = row["clients_failed"]
    assert failed["node_id"] == 104 and "in uint16 below 4096" in failed["reason"]
