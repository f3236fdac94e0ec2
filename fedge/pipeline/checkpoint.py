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

from fedge.core.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger("fedge")
FORMAT = 1
KEEP = 2
_NAME = re.compile(r"^round-(\d{4,})\.json$")


@dataclass
class TrainingLog:
    """What training produced besides the model (checkpointed with it after every round)."""

    rounds: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    train_bytes: int = 0
    node_partition: dict[int, int] = field(default_factory=dict)  # node id -> partition id
    client_teacher_accuracy: dict[int, float] = field(default_factory=dict)  # partition id -> acc
    resumed_from: list[int] = field(default_factory=list)  # rounds a resume started after
    # Nodes whose update the last round aggregated (not checkpointed: node ids die with a restart).
    last_round_nodes: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly form (checkpoint metadata)."""
        return {
            "rounds": self.rounds,
            "rejected": self.rejected,
            "train_bytes": self.train_bytes,
            "resumed_from": self.resumed_from,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainingLog:
        """Inverse of to_json (node ids are not kept: a restarted federation has new ones)."""
        return cls(
            rounds=list(data["rounds"]),
            rejected=list(data["rejected"]),
            train_bytes=int(data["train_bytes"]),
            resumed_from=list(data.get("resumed_from", [])),
        )


@dataclass
class Checkpoint:
    """Everything needed to continue after round `round`."""

    round: int
    weights: dict[str, np.ndarray]
    strategy: dict[str, dict[str, np.ndarray]]
    log: dict[str, Any]
    rng: dict[str, Any]


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
            except (OSError, ValueError, KeyError, TypeError) as err:
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
        if meta.get("format") != FORMAT or meta.get("round") != number:
            raise ValueError(f"format {meta.get('format')!r} / round {meta.get('round')!r}")
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
        return Checkpoint(number, weights, strategy, meta["log"], rng)
