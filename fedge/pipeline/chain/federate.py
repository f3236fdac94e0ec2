"""Federated distillation as a stage: the student trains on the clients' own data, by rounds.

The stage only describes the rounds (FederateConfig) and hands the student to a trainer: in a
run, Flower rounds (fedge.server.student_rounds); in the audit's shadows, a Flower-free FedAvg
replay; in `fedge compress` and the audit's replay of the target, the result the run saved
(the clients are gone by then). Saved results are keyed by the starting student and the
settings, so a replay continues from exactly what the run shipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedge.core.bounded import read_named
from fedge.core.config import ConfigError
from fedge.core.federate import FederateConfig
from fedge.core.io import atomic_write_bytes
from fedge.core.models import set_model_weights
from fedge.core.npz import checked_npz
from fedge.core.training import get_weights, weights_sha256
from fedge.pipeline.outputs.rows import StudentRounds

FEDERATED_DIR = "federated"  # in the run directory: one npz per federated student
MAX_SUMMARY_BYTES = 4 << 20  # its rounds' summary (json): a few kB per round


# (student to start from, config) -> (trained student, summary for results.json)
FederatedTrainer = Callable[[nn.Module, FederateConfig], tuple[nn.Module, StudentRounds]]


def result_key(model: nn.Module, config: FederateConfig) -> str:
    """Which saved result belongs to this starting student and these settings."""
    digest = hashlib.sha256(weights_sha256(get_weights(model)).encode())
    digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def recording(trainer: FederatedTrainer, run_dir: Path) -> FederatedTrainer:
    """`trainer`, saving each result in RUN/federated/ for `fedge compress` and the audit."""

    def train(model: nn.Module, config: FederateConfig) -> tuple[nn.Module, StudentRounds]:
        key = result_key(model, config)
        trained, summary = trainer(model, config)
        buffer = io.BytesIO()
        np.savez(buffer, **get_weights(trained))  # type: ignore[arg-type]
        atomic_write_bytes(run_dir / FEDERATED_DIR / f"{key}.npz", buffer.getvalue())
        atomic_write_bytes(
            run_dir / FEDERATED_DIR / f"{key}.json",
            json.dumps(summary.to_json(), sort_keys=True).encode(),
        )
        return trained, summary

    return train


def saved(run_dir: Path) -> FederatedTrainer:
    """A trainer that returns what the run's own clients trained (ConfigError if it has none)."""

    def train(model: nn.Module, config: FederateConfig) -> tuple[nn.Module, StudentRounds]:
        key = result_key(model, config)
        path = Path(run_dir) / FEDERATED_DIR / f"{key}.npz"
        if not path.is_file():
            raise ConfigError(
                "federated distillation needs the run's clients, which are gone: "
                f"{run_dir} saved no federated student for these student settings; allowed: "
                "the run's own student, prune, kd and student-* settings, or kd-source public"
            )
        trained, summary = _read_saved(path, model)
        return trained.eval(), dataclasses.replace(
            summary, replayed_from=f"{FEDERATED_DIR}/{path.name}"
        )

    return train


def _read_saved(path: Path, model: nn.Module) -> tuple[nn.Module, StudentRounds]:
    """A saved federated student and its rounds, read as untrusted files (ConfigError if not)."""
    trained = _copy(model)
    try:
        weights = checked_npz(path, tuple(model.state_dict()))  # sizes checked before loading
        set_model_weights(trained, weights)
        text = read_named(path.with_suffix(".json"), MAX_SUMMARY_BYTES)
        summary = StudentRounds.from_json(json.loads(text))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:300]  # torch's shape errors span lines
        raise ConfigError(
            f"{path.parent} holds a damaged federated student {path.stem}: {reason}; allowed: "
            "the files the run wrote, or kd-source public (no federated rounds)"
        ) from None
    return trained, summary


def once_under_dp(
    trainer: FederatedTrainer, run_dir: Path, releases: list[tuple[str, list[dict[str, Any]]]]
) -> FederatedTrainer:
    """Under DP, each student's rounds run once per run, whatever resumes follow.

    A resume reuses what an earlier try trained (its rounds join `releases`, the ledger's),
    and refuses to train again rounds that started and did not finish: they were released,
    and running them again would spend more than dp-epsilon.
    """
    reuse = saved(run_dir)

    def train(model: nn.Module, config: FederateConfig) -> tuple[nn.Module, StudentRounds]:
        key = result_key(model, config)
        if (Path(run_dir) / FEDERATED_DIR / f"{key}.npz").is_file():
            trained, summary = reuse(model, config)
            releases.append((f"student {config.student} rounds (an earlier try)", summary.rounds))
            return trained, summary
        started = Path(run_dir) / FEDERATED_DIR / f"{key}.started"
        if started.exists():
            raise ConfigError(
                f"an earlier try of this run started the student's federated rounds "
                f"({config.student}) and did not finish them: under DP they were released, and "
                "training them again would spend more than dp-epsilon; allowed: fedge compress "
                "RUN --kd-source public (the trained teacher is kept), or a new run"
            )
        atomic_write_bytes(started, b"")
        result = trainer(model, config)  # `recording` saved it: a resume reuses it
        started.unlink(missing_ok=True)
        return result

    return train


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)
