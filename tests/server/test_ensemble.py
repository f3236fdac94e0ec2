"""Ensemble distillation: the query carries public inputs out and logits back, nothing else."""

import numpy as np
import pytest
import torch

from fedge.client.app import app as client_app
from fedge.compression.ensemble import LogitTable, transfer_set
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import PublicPool, build_federation
from fedge.core.records import model_spec, record_to_weights
from fedge.core.training import predict_logits, set_weights
from fedge.pipeline.chain.stages import CompressionConfig
from fedge.pipeline.chain.teacher_source import ENSEMBLE_FILE
from fedge.server.ensemble import ensemble_source
from fedge.server.nodes import Nodes
from fedge.server.training_loop import RoundLoop, train_teacher
from tests.flower_local import LocalGrid

CFG = RunConfig(
    clients=3, rounds=1, partition="iid", local_epochs=1, teacher_mode="ensemble", ensemble_views=3
)


def _setup(grid: LocalGrid, train: bool):
    fed = build_federation(CFG)
    spec = model_spec(fed.dataset.preprocessing, 10)
    teacher = build_teacher((1, 8, 8), 10, seed=0)
    nodes = list(grid.contexts)
    if train:
        loop = RoundLoop(Nodes())
        train_teacher(grid, CFG, teacher, fed.server.test, spec, loop=loop)
        nodes = loop.last_round_nodes
    return fed, spec, teacher, nodes


def test_ensemble_sends_public_inputs_gets_logits_and_distils_their_mean(tmp_path):
    grid = LocalGrid(client_app, num_nodes=3)
    fed, spec, teacher, nodes = _setup(grid, train=True)
    pool = fed.server.public_pool
    source = ensemble_source(grid, CFG, teacher, pool, nodes=nodes, spec=spec, run_dir=tmp_path)
    assert source.summary.mode == "ensemble" and source.summary.clients == [0, 1, 2]
    queries = [msg for msg in grid.sent if msg.metadata.message_type == m.LOGITS]
    assert len(queries) == 3
    for query in queries:  # out: public inputs and settings only
        assert set(query.content) == {m.INPUTS, m.CONFIG}
        sent = query.content.array_records[m.INPUTS]
        assert list(sent) == ["x"]
        x = sent["x"].numpy()
        assert len(x) == 3 * len(pool) and np.array_equal(x[: len(pool)], pool.x)
    # back: each node's logits from the model it trained; the teacher is their plain mean
    expected = []
    for node in nodes:
        model = build_teacher((1, 8, 8), 10, seed=0)
        set_weights(model, record_to_weights(grid.contexts[node].state[m.STATE_MODEL]))
        expected.append(predict_logits(model, source.pool.x))
    table = source.teacher(torch.from_numpy(source.pool.x)).numpy()
    np.testing.assert_allclose(table, np.mean(expected, axis=0), rtol=1e-5, atol=1e-5)
    assert not np.allclose(expected[0], expected[1])  # the clients' models differ
    assert (tmp_path / ENSEMBLE_FILE).is_file()
    assert source.fixed_views == 3  # distillation will not augment and divides its epochs
    compression = CompressionConfig.from_run(CFG.replace(student="tiny"))
    distill = compression.on_fixed_views(source.fixed_views).distill
    assert distill.kd.mixup == 0 and distill.kd.shift == 0
    assert distill.epochs == round(compression.distill.epochs / 3)


def test_nodes_without_a_model_of_the_round_leave_the_global_teacher(tmp_path):
    grid = LocalGrid(client_app, num_nodes=3)
    fed, spec, teacher, nodes = _setup(grid, train=False)
    source = ensemble_source(
        grid,
        CFG,
        teacher,
        fed.server.public_pool,
        nodes=nodes,
        spec=spec,
        run_dir=tmp_path,
    )
    assert source.teacher is teacher and source.summary.mode == "global"
    assert "no local model from round 1" in (source.summary.reason or "")
    assert not (tmp_path / ENSEMBLE_FILE).exists()


def test_logit_table_answers_only_for_its_transfer_set():
    pool = PublicPool(np.random.default_rng(0).normal(size=(20, 1, 8, 8)).astype(np.float32))
    transfer = transfer_set(pool, 4, seed=0, mixup=0.4, noise=0.05, shift=1)
    assert len(transfer) == 80 and np.array_equal(transfer.x[:20], pool.x)
    assert not np.allclose(transfer.x[20:40], pool.x)  # the views are new inputs
    logits = np.arange(80 * 10, dtype=np.float32).reshape(80, 10)
    table = LogitTable(transfer.x, logits)
    batch = torch.from_numpy(transfer.x[[5, 70, 33]])
    np.testing.assert_array_equal(table(batch).numpy(), logits[[5, 70, 33]])
    with pytest.raises(KeyError, match="not in the ensemble's transfer set"):
        table(batch + 0.5)
