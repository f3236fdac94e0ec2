"""Federated distillation on a client: keep the final teacher's logits, train the student with them.

The teacher's logits on the client's own training split are computed when the final teacher
is evaluated and kept in `context.state` (only logits, on the node); each student round
trains the received student with KD to them plus the labels, and sends back only the student.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from torch import nn

from fedge.client.local_round import Fit, train_round
from fedge.core import messages as m
from fedge.core import training
from fedge.core.config import RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.models import student_from_weights
from fedge.core.partition import ClientData
from fedge.core.records import as_int, record_to_spec, record_to_weights
from fedge.privacy import dp_sgd


def keep_teacher_logits(
    cfg: RunConfig, model: nn.Module, msg: Message, data: ClientData, context: Context
) -> None:
    """Store the evaluated teacher's logits on this client's training split (kd-source != public)."""
    if cfg.distill_from == "public":
        return
    logits = training.predict_logits(model, data.train.x)
    context.state[m.STATE_TEACHER_LOGITS] = ArrayRecord({"logits": Array(logits)})
    sha = training.weights_sha256(record_to_weights(msg.content.array_records[m.ARRAYS]))
    context.state[m.STATE_TEACHER] = ConfigRecord({m.TEACHER_SHA256: sha})


def train_student(
    cfg: RunConfig, pid: int, data: ClientData, msg: Message, context: Context
) -> Message:
    """One student round: KD to the kept teacher logits + labels, with this round's injected faults."""
    config = msg.content.config_records[m.CONFIG]
    stage = FederateConfig.from_wire(msg.content.config_records[m.FEDERATE])
    logits = kept_teacher_logits(context, str(config[m.TEACHER_SHA256]))
    prep, num_classes = record_to_spec(config)
    weights = record_to_weights(msg.content.array_records[m.ARRAYS])
    model = student_from_weights(prep.input_shape, num_classes, stage.student, weights)
    server_round = as_int(config["server-round"])
    schedule = _dp_schedule(cfg, stage, len(data.train)) if cfg.dp == "local" else None
    update = train_round(
        cfg,
        model,
        data.train.y,
        _student_fit(cfg, model, data.train.x, logits, stage, schedule),
        partition_id=pid,
        server_round=server_round,
        num_classes=num_classes,
        stragglers_wait=False,
    )
    if schedule is None:
        return update.reply(msg)
    done = as_int(config.get(m.STUDENT_ROUNDS_BEFORE, 0)) + server_round - cfg.rounds
    epsilon = schedule.epsilon_after(cfg.rounds, cfg, student_rounds=done)
    return update.reply(msg, **{m.DP_EPSILON: epsilon, m.DP_NOISE: schedule.student_noise})


def _dp_schedule(cfg: RunConfig, stage: FederateConfig, records: int) -> dp_sgd.LocalPlan:
    """Local DP's schedule, which the rounds' settings must match (it was planned from them)."""
    if stage.epochs != cfg.student_epochs or stage.batch_size != cfg.batch_size:
        raise ValueError(
            f"student rounds of {stage.epochs} epochs at batch {stage.batch_size} are not the "
            f"ones local DP planned ({cfg.student_epochs} at {cfg.batch_size})"
        )
    return dp_sgd.plan(records, cfg)


def _student_fit(
    cfg: RunConfig,
    model: nn.Module,
    x: np.ndarray,
    logits: np.ndarray,
    stage: FederateConfig,
    schedule: dp_sgd.LocalPlan | None,
) -> Fit:
    """A student round's local training: SGD on the distillation loss, DP-SGD under local DP."""

    def fit(labels: np.ndarray, seed: int) -> training.TrainResult:
        if schedule is None:
            return training.kd_local_train(
                model, x, labels, logits, epochs=stage.epochs, lr=stage.lr,
                batch_size=stage.batch_size, seed=seed, temperature=stage.temperature,
                alpha=stage.alpha, soft=stage.soft, sample_budget=stage.sample_budget,
            )  # fmt: skip
        loss = dp_sgd.dp_sgd_train(
            model, x, labels, noise=schedule.student_noise, epochs=stage.epochs, lr=stage.lr,
            batch_size=stage.batch_size, clip=cfg.dp_clip, seed=seed, extra=logits,
            objective=dp_sgd.distillation(stage),
        )  # fmt: skip
        return training.TrainResult(loss=loss, num_examples=len(labels))

    return fit


def kept_teacher_logits(context: Context, wanted: str) -> np.ndarray:
    """The logits this node kept for teacher `wanted` (sha256); LookupError if it has none."""
    kept = context.state.config_records.get(m.STATE_TEACHER)
    if kept is None or str(kept[m.TEACHER_SHA256]) != wanted:
        have = "none" if kept is None else str(kept[m.TEACHER_SHA256])[:12]
        raise LookupError(
            f"no logits of teacher {wanted[:12]} on this node (it has {have}); it did not "
            "evaluate the final teacher, or restarted since"
        )
    return context.state.array_records[m.STATE_TEACHER_LOGITS]["logits"].numpy()
