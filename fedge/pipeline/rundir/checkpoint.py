"""Per-round checkpoints: atomic, self-checking, no pickle; the newest valid one wins.

A checkpoint of round N is two files in `checkpoints/`: `round-N.npz` (the global model,
the strategy's state and the torch/numpy RNG states, saved without pickle) and
`round-N.json` (round log, Python RNG state, the npz's sha256), written in that order, each
atomically. A checkpoint counts only if its JSON parses and the npz matches its sha256, so a
crash between the two writes, a truncated file or a flipped byte falls back to the round
before. The two newest checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.core.config import SETTINGS, RunConfig
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.pipeline.rundir.round_rows import check_rejection, check_round_row

log = logging.getLogger("fedge")
FORMAT = 2  # 2: the run config the rounds were made with is in every checkpoint
KEEP = 2
_NAME = re.compile(r"^round-(\d{4,})\.json$")


@dataclass
class TrainingLog:
    """What training produced besides the model (checkpointed with it after every round)."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    train_bytes: int = 0
    client_teacher_accuracy: dict[int, float] = field(default_factory=dict)  # partition id -> acc
    resumed_from: list[int] = field(default_factory=list)  # rounds a resume started after

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (checkpoint metadata)."""
        return {
            "rounds": self.rounds,
            "rejected": self.rejected,
            "train_bytes": self.train_bytes,
            "resumed_from": self.resumed_from,
        }

    @classmethod
    def from_json(cls, data: Any) -> TrainingLog:
        """Inverse of to_json.

        ValueError if anything is missing or of the wrong type (a damaged checkpoint).
        """
        if not isinstance(data, dict):
            raise ValueError("the round log is not an object")
        rounds, rejected = data.get("rounds"), data.get("rejected")
        train_bytes, resumed = data.get("train_bytes"), data.get("resumed_from", [])
        if not isinstance(rounds, list):
            raise ValueError("the round log's rounds are not a list")
        for number, row in enumerate(rounds, start=1):
            check_round_row(row, number)  # every field, and the rows numbered 1, 2, ...
        if not isinstance(rejected, list):
            raise ValueError("the round log's rejections are not a list")
        for row in rejected:
            check_rejection(row)
        if not isinstance(train_bytes, int) or isinstance(train_bytes, bool) or train_bytes < 0:
            raise ValueError("the round log's train_bytes is not a count")
        if not isinstance(resumed, list) or not all(isinstance(r, int) for r in resumed):
            raise ValueError("the round log's resumed_from is malformed")
        return cls(rounds=rounds, rejected=rejected, train_bytes=train_bytes, resumed_from=resumed)


@dataclass
class Checkpoint:
    """Everything needed to continue after round `round`."""

    round: int
    weights: dict[str, np.ndarray]
    strategy: dict[str, dict[str, np.ndarray]]
    log: dict[str, Any]
    rng: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)  # the settings a resume may not change


def capture_rng() -> dict[str, Any]:
    """The process's torch, numpy and Python RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state().numpy().copy(),
        "numpy_keys": np.asarray(keys),
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }


def restore_rng(rng: dict[str, Any]) -> None:
    """Inverse of capture_rng."""
    torch.set_rng_state(torch.from_numpy(np.asarray(rng["torch"], dtype=np.uint8).copy()))
    kind, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state(
        (kind, np.asarray(rng["numpy_keys"], dtype=np.uint32), pos, has_gauss, cached)
    )
    version, internal, gauss_next = rng["python"]
    random.setstate((version, tuple(internal), gauss_next))


class CheckpointDir:
    """The `checkpoints/` directory of one run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def save(self, ckpt: Checkpoint) -> None:
        """Write round `ckpt.round` atomically, then drop all but the newest KEEP rounds."""
        arrays: dict[str, np.ndarray] = {f"model/{k}": v for k, v in ckpt.weights.items()}
        for name, state in ckpt.strategy.items():
            arrays.update({f"strategy/{name}/{k}": v for k, v in state.items()})
        arrays["rng/torch"] = ckpt.rng["torch"]
        arrays["rng/numpy_keys"] = ckpt.rng["numpy_keys"]
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        data = buffer.getvalue()
        stem = f"round-{ckpt.round:04d}"
        atomic_write_bytes(self.path / f"{stem}.npz", data)
        meta = {
            "format": FORMAT,
            "round": ckpt.round,
            "npz_sha256": hashlib.sha256(data).hexdigest(),
            "log": ckpt.log,
            "rng": {"numpy": ckpt.rng["numpy"], "python": ckpt.rng["python"]},
            "config": ckpt.config,
            "config_sha256": config_sha256(ckpt.config),
        }
        atomic_write_json(self.path / f"{stem}.json", meta)
        for old in self._rounds()[:-KEEP]:
            for suffix in (".json", ".npz"):
                (self.path / f"round-{old:04d}{suffix}").unlink(missing_ok=True)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that reads back intact (older ones if the newest is damaged)."""
        for number in reversed(self._rounds()):
            try:
                return self._load(number)
            except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
                log.warning(
                    "checkpoint round %d is damaged (%s); trying the one before", number, err
                )
        return None

    def exists(self) -> bool:
        """Whether any checkpoint file is present (valid or not)."""
        return bool(self._rounds())

    def _rounds(self) -> list[int]:
        if not self.path.is_dir():
            return []
        found = (_NAME.match(p.name) for p in self.path.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def _load(self, number: int) -> Checkpoint:
        stem = self.path / f"round-{number:04d}"
        meta = json.loads((stem.with_suffix(".json")).read_text())
        check_meta(meta, number)
        data = stem.with_suffix(".npz").read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["npz_sha256"]:
            raise ValueError("npz does not match its recorded sha256")
        weights: dict[str, np.ndarray] = {}
        strategy: dict[str, dict[str, np.ndarray]] = {}
        rng: dict[str, Any] = dict(meta["rng"])
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for key in npz.files:
                kind, _, rest = key.partition("/")
                if kind == "model":
                    weights[rest] = npz[key]
                elif kind == "strategy":
                    name, _, array = rest.partition("/")
                    strategy.setdefault(name, {})[array] = npz[key]
                elif kind == "rng":
                    rng[rest] = npz[key]
        if not weights:
            raise ValueError("the npz holds no model")
        _check_rng(rng)
        return Checkpoint(number, weights, strategy, meta["log"], rng, meta["config"])


def resume_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The settings a resumed run must share with its checkpoints (all but the resumable)."""
    return {k: v for k, v in cfg.to_run_config().items() if not SETTINGS[k].resume}


def config_sha256(config: dict[str, Any]) -> str:
    """sha256 of a config dict in canonical JSON."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def check_meta(meta: Any, number: int) -> None:
    """ValueError naming the first field of a checkpoint's JSON that is missing or malformed."""
    if not isinstance(meta, dict):
        raise ValueError("the checkpoint JSON is not an object")
    if meta.get("format") != FORMAT or meta.get("round") != number:
        raise ValueError(f"format {meta.get('format')!r} / round {meta.get('round')!r}")
    sha = meta.get("npz_sha256")
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise ValueError("npz_sha256 is not 64 hex digits")
    config = meta.get("config")
    if not isinstance(config, dict) or meta.get("config_sha256") != config_sha256(config):
        raise ValueError("the config does not match its recorded sha256")
    if len(TrainingLog.from_json(meta.get("log")).rounds) != number:  # raises if malformed
        raise ValueError(f"the round log of round {number} does not hold {number} rounds")
    rng = meta.get("rng")
    if not isinstance(rng, dict) or not {"numpy", "python"} <= rng.keys():
        raise ValueError("rng lacks numpy or python state")


def _check_rng(rng: dict[str, Any]) -> None:
    """Load every RNG state into a throwaway generator: ValueError/TypeError if malformed."""
    try:
        kind, pos, has_gauss, cached = rng["numpy"]
        keys = np.asarray(rng["numpy_keys"], dtype=np.uint32)
        np.random.RandomState().set_state((kind, keys, int(pos), int(has_gauss), float(cached)))
        version, internal, gauss_next = rng["python"]
        random.Random().setstate((version, tuple(internal), gauss_next))
        torch.Generator().set_state(
            torch.from_numpy(np.asarray(rng["torch"], dtype=np.uint8).copy())
        )
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise ValueError(f"a random generator state is malformed: {err}") from err
