"""One client's local training in a round, with that round's injected faults, and the reply it sends.

Both training handlers (the teacher's rounds in `fedge.client.app.train`, the student's in
`fedge.client.student.train_student`) run their training through `train_round`, so a drop-out,
a Byzantine client's flipped labels or poisoned update and a straggler's wait happen in one
place, in the same order, from the same seed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict
from torch import nn

from fedge.core import faults, training
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import weights_to_record

Fit = Callable[[np.ndarray, int], training.TrainResult]
"""Train the model in place on these labels with this seed; what the training reports."""


@dataclass(frozen=True)
class LocalUpdate:
    """What a client sends back from a training round: its weights and the shared metrics."""

    weights: OrderedDict[str, np.ndarray]
    metrics: dict[str, int | float]

    def reply(self, msg: Message, **extra: float) -> Message:
        """The train reply: the weights and the metrics (plus `extra`, e.g. DP's epsilon)."""
        metrics = MetricRecord({**self.metrics, **extra})
        content = RecordDict({m.ARRAYS: weights_to_record(self.weights), m.METRICS: metrics})
        return Message(content, reply_to=msg)


def train_round(
    cfg: RunConfig,
    model: nn.Module,
    labels: np.ndarray,
    fit: Fit,
    *,
    partition_id: int,
    server_round: int,
    num_classes: int,
    stragglers_wait: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> LocalUpdate:
    """Train `model` with `fit` as this round's faults say (`fedge.core.faults.round_roles`).

    A dropped-out client raises SimulatedDropoutError (the server sees an error reply); a
    label-flip attacker trains on flipped labels; a sign-flip or gaussian attacker trains
    honestly and sends a poisoned update instead; a straggler waits before replying.

    Parameters
    ----------
    cfg, model, labels
        The run's settings; the received model (trained in place); the training labels.
    fit
        Trains `model` on (labels, seed): plain, DP-SGD or federated distillation.
    partition_id, server_round, num_classes
        Who and when (the roles and `training.client_seed` follow); classes, to flip labels.
    stragglers_wait, sleep
        Whether a straggler waits (the student rounds have none), and how.

    Returns
    -------
    LocalUpdate
        The weights to send and the metrics every training reply carries.

    """
    roles = faults.round_roles(cfg, server_round)
    if partition_id in roles.dropped:
        raise faults.SimulatedDropoutError(
            f"partition {partition_id} dropped out of round {server_round}"
        )
    seed = training.client_seed(cfg.seed, server_round, partition_id)
    attacking = partition_id in roles.byzantine
    if attacking and cfg.byzantine_mode == "label-flip":
        labels = faults.flip_labels(labels, num_classes)
    start = training.get_weights(model)
    result = fit(labels, seed)
    weights = training.get_weights(model)
    if attacking:
        weights = faults.poison_update(cfg, start, weights, seed)
    if stragglers_wait and partition_id in roles.stragglers:
        sleep(faults.straggler_delay(cfg))
    metrics: dict[str, int | float] = {
        m.NUM_EXAMPLES: result.num_examples,
        m.TRAIN_LOSS: result.loss,
        m.PARTITION_ID: partition_id,
        m.UNIT_WEIGHT: 1,
    }
    return LocalUpdate(weights, metrics)
