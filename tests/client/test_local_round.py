"""train_round: the injected faults around any local training, for both training handlers."""

import numpy as np
import pytest
import torch
from torch import nn

from fedge.client.local_round import train_round
from fedge.core import faults
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.training import TrainResult, client_seed, get_weights

CFG = RunConfig(clients=4, seed=3)
LABELS = np.array([0, 1, 2, 9], dtype=np.int64)


class Recorder:
    """A fit that adds 1 to every weight and remembers its labels and seed."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.calls = model, []

    def __call__(self, labels: np.ndarray, seed: int) -> TrainResult:
        self.calls.append((labels.copy(), seed))
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(1.0)
        return TrainResult(loss=0.5, num_examples=len(labels))


def _round(cfg: RunConfig, pid: int, server_round: int = 2, **options):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    start = get_weights(model)
    fit, slept = Recorder(model), []
    update = train_round(
        cfg, model, LABELS, fit, partition_id=pid, server_round=server_round, num_classes=10,
        sleep=slept.append, **options,
    )  # fmt: skip
    return start, fit, slept, update


def test_an_honest_client_sends_what_it_trained_and_the_shared_metrics():
    start, fit, slept, update = _round(CFG, pid=1)
    (labels, seed), *more = fit.calls
    assert not more and np.array_equal(labels, LABELS) and seed == client_seed(3, 2, 1)
    assert all(np.array_equal(update.weights[k], start[k] + 1) for k in start) and not slept
    assert update.metrics == {
        m.NUM_EXAMPLES: 4,
        m.TRAIN_LOSS: 0.5,
        m.PARTITION_ID: 1,
        m.UNIT_WEIGHT: 1,
    }


def test_a_dropped_client_raises_before_training():
    cfg = CFG.replace(dropout_fraction=0.5)
    dropped = sorted(faults.round_roles(cfg, 2).dropped)
    model = nn.Linear(3, 2)
    fit = Recorder(model)
    with pytest.raises(faults.SimulatedDropoutError, match=f"partition {dropped[0]} dropped"):
        train_round(
            cfg, model, LABELS, fit, partition_id=dropped[0], server_round=2, num_classes=10
        )
    assert fit.calls == []


@pytest.mark.parametrize("mode", ["sign-flip", "gaussian", "label-flip"])
def test_a_byzantine_client_attacks_as_its_mode_says(mode):
    cfg = CFG.replace(byzantine_fraction=0.25, byzantine_scale=3.0, byzantine_mode=mode)
    (pid,) = faults.byzantine_partitions(cfg)
    start, fit, _, update = _round(cfg, pid)
    labels, seed = fit.calls[0]
    trained = {k: v + 1 for k, v in start.items()}
    if mode == "label-flip":  # poisons the data, sends what it trained
        assert np.array_equal(labels, [9, 8, 7, 0])
        assert all(np.array_equal(update.weights[k], trained[k]) for k in start)
    else:  # trains honestly, sends a poisoned update
        assert np.array_equal(labels, LABELS)
        poisoned = faults.poison_update(cfg, start, trained, seed)
        assert all(np.array_equal(update.weights[k], poisoned[k]) for k in start)


def test_stragglers_wait_in_teacher_rounds_only():
    cfg = CFG.replace(straggler_fraction=0.5, straggler_delay=7.5)
    late = faults.round_roles(cfg, 2).stragglers
    assert late and all(_round(cfg, pid)[2] == [7.5] for pid in late)
    assert all(_round(cfg, pid, stragglers_wait=False)[2] == [] for pid in late)
    assert all(_round(cfg, pid)[2] == [] for pid in set(range(4)) - late)
