"""Checkpoints: round trip, damage detection, fall-back, and resume equal to an unbroken run."""

import json
import random

import numpy as np
import pytest
import torch

from fedge.client.app import app as client_app
from fedge.core.config import RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import build_federation
from fedge.core.records import model_spec
from fedge.core.training import get_weights, weights_sha256
from fedge.pipeline.rundir.checkpoint import Checkpoint, CheckpointDir, capture_rng, restore_rng
from fedge.server.training_loop import train_teacher
from tests.flower_local import LocalGrid
from tests.pipeline.rows import round_row


def _ckpt(number: int) -> Checkpoint:
    return Checkpoint(
        round=number,
        weights={"w": np.full((2, 3), number, np.float32)},
        strategy={"m_t": {"w": np.ones(3) * number}},
        log={
            "rounds": [round_row(i) for i in range(1, number + 1)],
            "rejected": [],
            "train_bytes": number,
        },
        rng=capture_rng(),
        config={"seed": 0, "rounds": 5},
    )


def test_round_trip_restores_weights_state_and_every_rng(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    ckpts.save(_ckpt(1))
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    loaded = ckpts.latest()
    assert loaded is not None and loaded.round == 1
    np.testing.assert_array_equal(loaded.weights["w"], np.full((2, 3), 1, np.float32))
    np.testing.assert_array_equal(loaded.strategy["m_t"]["w"], np.ones(3))
    assert loaded.log["train_bytes"] == 1
    restore_rng(loaded.rng)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and (expected[1] == again[1]).all()
    assert expected[2] == again[2]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "round-0003.npz").write_bytes((d / "round-0003.npz").read_bytes()[:-50]),
        lambda d: (d / "round-0003.json").write_text('{"format": 1, "rou'),
        lambda d: (d / "round-0003.json").unlink(),  # killed between the two writes
        lambda d: (d / "round-0003.npz").unlink(),
        lambda d: _flip_a_byte(d / "round-0003.npz"),
        lambda d: _edit_json(d, lambda m: m["rng"].update(numpy=["MT19937", "x", 0, 0.0])),
        lambda d: _edit_json(d, lambda m: m["rng"].update(python=[3, [1, 2], None])),
        lambda d: _edit_json(d, lambda m: m["log"].update(rounds=[{"round": "one"}])),
        lambda d: _edit_json(d, lambda m: m["log"].update(train_bytes=-1)),
        lambda d: _edit_json(d, lambda m: m["config"].update(seed=1)),  # sha256 no longer fits
        lambda d: _edit_json(d, lambda m: m.pop("log")),
        lambda d: (d / "round-0003.json").write_text("[]"),
        lambda d: (d / "round-0003.json").write_text("[" * 100_000 + "]" * 100_000),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][1].update(accuracy="x")),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][0].update(accuracy=1.5)),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][2].update(clients_ok=True)),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][2].update(sampled=[0.5])),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][2].update(skipped=3)),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][2].update(note="hi")),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][2].pop("injected")),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"][2]["clients_failed"].append(1)),
        lambda d: _edit_json(d, lambda m: m["log"]["rounds"].pop()),  # 2 rows for round 3
        lambda d: _edit_json(d, lambda m: m["log"]["rejected"].append({"round": "3"})),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(tmp_path, damage):
    ckpts = CheckpointDir(tmp_path)
    for number in (1, 2, 3):
        ckpts.save(_ckpt(number))
    assert sorted(p.name for p in tmp_path.iterdir())[:2] == ["round-0002.json", "round-0002.npz"]
    assert not (tmp_path / "round-0001.npz").exists()  # only the newest two are kept
    damage(tmp_path)
    loaded = ckpts.latest()
    assert loaded is not None and loaded.round == 2


def test_no_valid_checkpoint_means_start_from_scratch(tmp_path):
    ckpts = CheckpointDir(tmp_path)
    ckpts.save(_ckpt(1))
    _flip_a_byte(tmp_path / "round-0001.npz")
    assert ckpts.latest() is None


def _edit_json(directory, change):
    path = directory / "round-0003.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


class CrashAt(LocalGrid):
    """A grid whose server 'dies' when it sends the given round's training messages."""

    def __init__(self, crash_round, **kwargs):
        super().__init__(client_app, **kwargs)
        self.crash_round, self.rounds = crash_round, 0

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "train":
            self.rounds += 1
            if self.rounds == self.crash_round:
                raise KeyboardInterrupt("server killed")
        return super().send_and_receive(messages, timeout=timeout)


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "fedavg"},
        {"strategy": "fedadam"},
        {"dp": "central", "dp_clip_mode": "adaptive", "dp_noise": 0.5, "dp_clip": 0.05},
        {"dp": "local", "dp_noise": 1.0, "dp_clip": 1.0},  # its rows carry the clients' epsilon
    ],
)
def test_resume_after_a_crash_gives_the_same_final_model(tmp_path, settings):
    """Round-to-round state (FedAdam's moments, adaptive clipping's norm, the DP noise's RNG):
    without restoring it the final hash differs."""
    cfg = RunConfig(clients=3, rounds=2, partition="iid", local_epochs=1, **settings)
    fed = build_federation(cfg)
    spec = model_spec(fed.dataset.preprocessing, 10)

    def run(grid, ckpts):
        np.random.seed(0)  # as run_server does: Flower's DP noise draws from numpy's global RNG
        teacher = build_teacher((1, 8, 8), 10, seed=0)
        log = train_teacher(grid, cfg, teacher, fed.server.test, spec, ckpts)
        return weights_sha256(get_weights(teacher)), log

    unbroken, _ = run(LocalGrid(client_app, num_nodes=3), CheckpointDir(tmp_path / "a"))
    ckpts = CheckpointDir(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        run(CrashAt(2, num_nodes=3), ckpts)
    assert ckpts.latest().round == 1
    resumed, log = run(LocalGrid(client_app, num_nodes=3), ckpts)
    assert resumed == unbroken
    assert [r["round"] for r in log.rounds] == [1, 2] and log.resumed_from == [1]
