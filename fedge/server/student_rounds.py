"""Federated distillation's Flower half: rounds of student training on the clients (train.student).

Each round is a teacher round's machinery (update validation, the run's aggregation rule,
fault injection, failures recorded) on the student: the clients train it with KD to the final
teacher's logits on their own data plus their labels (fedge.core.training.kd_local_train).
"""

from __future__ import annotations

import logging
from typing import Any

from flwr.app import ConfigRecord
from flwr.serverapp import Grid
from torch import nn

from fedge.core import messages as m
from fedge.core.config import ConfigError, RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.partition import Split
from fedge.core.records import record_to_weights, weights_to_record
from fedge.core.training import evaluate, get_weights, set_weights
from fedge.pipeline.chain.federate import FederatedTrainer
from fedge.pipeline.outputs.rows import StudentRounds
from fedge.pipeline.rundir.checkpoint import TrainingLog
from fedge.privacy.budget import student_trainings
from fedge.privacy.ledger import TEACHER_RELEASE, Release
from fedge.server.nodes import Nodes
from fedge.server.strategy import make_strategy
from fedge.server.training_loop import OnRound, RoundLoop, train_round

log = logging.getLogger("fedge")


def flower_trainer(
    grid: Grid,
    cfg: RunConfig,
    spec: dict[str, Any],
    teacher_sha256: str,
    test: Split,
    on_round: OnRound | None = None,
    loop: RoundLoop | None = None,
    releases: list[Release] | None = None,
) -> FederatedTrainer:
    """Student rounds through `grid`; the summary has each round's row and the bytes sent.

    Rounds are numbered after the teacher's (rounds + 1, ...), so injected faults and client
    seeds differ from the teacher's rounds. `loop` is the teacher's: each student starts a
    loop of its own on the same nodes. `releases` (the privacy ledger's phases: the teacher's
    rounds first) gets each student's rounds once they ran; under DP each round is accounted
    after all of them, and local DP's clients are told how many student rounds came before.
    """
    released: list[Release] = releases if releases is not None else []

    def train(model: nn.Module, config: FederateConfig) -> tuple[nn.Module, StudentRounds]:
        trained = len(released) - 1  # the teacher's rounds come first
        if cfg.dp != "none" and trained >= student_trainings(cfg):
            raise ConfigError(
                f"the privacy budget was planned for {student_trainings(cfg)} student "
                f"training(s) on the clients, and {trained} already ran: another would spend "
                "more than dp-epsilon"
            )
        strategy = make_strategy(cfg, "student")
        out = TrainingLog()
        rounds = RoundLoop(Nodes()) if loop is None else RoundLoop(loop.nodes, loop.sampling_secret)
        rounds.earlier, rounds.phase = [row for _, rows in released for row in rows], "student"
        before = sum(len(rows) for name, rows in released if name != TEACHER_RELEASE)
        arrays = weights_to_record(get_weights(model))
        wire = {**spec, m.TEACHER_SHA256: teacher_sha256, m.STUDENT_ROUNDS_BEFORE: before}
        stage = {
            m.FEDERATE: ConfigRecord(dict(config.to_wire()))
        }  # the stage's settings, as they are
        for index in range(1, config.rounds + 1):
            server_round = cfg.rounds + index
            arrays, row = train_round(
                grid, cfg, strategy, server_round, arrays, wire, out, rounds, m.TRAIN_STUDENT, stage
            )
            set_weights(model, record_to_weights(arrays))
            row["accuracy"] = evaluate(model, test.x, test.y)[1]
            out.rounds.append(row)
            if on_round is not None:
                on_round(f"student-{config.student}", row)
            _log_round(index, config.rounds, row)
        released.append((f"student {config.student} rounds", out.rounds))
        if all(row["skipped"] for row in out.rounds):
            log.warning("no student round produced a model; the student is the one it started as")
        return model.eval(), StudentRounds(out.rounds, out.rejected, out.train_bytes)

    return train


def _log_round(index: int, rounds: int, row: dict[str, Any]) -> None:
    log.info(
        "student round %d/%d  central accuracy %.4f  clients %d ok, %d failed, %d rejected",
        index,
        rounds,
        row["accuracy"],
        row["clients_ok"],
        len(row["clients_failed"]),
        len(row["clients_rejected"]),
    )
