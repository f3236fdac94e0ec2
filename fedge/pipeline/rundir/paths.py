"""Run directories: built as DIR.partial and renamed on success; resume bookkeeping; file names."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedge.core.bounded import read_named
from fedge.core.config import ConfigError, RunConfig
from fedge.core.ort import make_session
from fedge.pipeline.rundir.checkpoint import CheckpointDir, resume_fingerprint

if TYPE_CHECKING:
    from onnxruntime import InferenceSession

log = logging.getLogger("fedge")
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PLOT_FILE = "accuracy.png"
TEACHER_FILE = "teacher.onnx"
COMPRESSED_FILE = "compressed.json"  # the shipped bundle's record, for a resumed run
BUNDLE_DIR = "bundle"
TIERS_DIR, TIERS_FILE = "bundles", "tiers.json"  # device tiers: each tier's bundle, their records
KEYS_DIR = "keys"
NODES_DIR = "nodes"  # simulation: the simulated nodes' model stores live under it
RUN_CONFIG_FILE = "run-config.json"
CHECKPOINT_DIR = "checkpoints"
STOPPED_FILE = "stopped.txt"  # why the server stopped on a setting (simulate: exit 2, one line)


@contextmanager
def staged_run_dir(final: Path, *, resume: bool = False) -> Iterator[Path]:
    """Work in `<final>.partial`, rename to `final` on success.

    On failure the partial directory is removed, unless it holds completed rounds (or is being
    resumed): then it stays for `fedge simulate --resume`. A fresh run refuses to start over an
    unfinished one.
    """
    work = partial_dir(final)
    if resume:
        stored_config(final)  # raises ConfigError if there is nothing to resume
    else:
        if final.exists() and any(final.iterdir()):
            raise FileExistsError(f"run directory {final} already exists and is not empty")
        if (work / RUN_CONFIG_FILE).exists():
            raise FileExistsError(
                f"{work} holds an unfinished run; continue it with "
                f"`fedge simulate --resume {final}` or delete it"
            )
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    try:
        yield work
    except BaseException:
        if resume or CheckpointDir(work / CHECKPOINT_DIR).exists():
            log.error(
                "the run stopped; completed rounds are kept in %s: `fedge simulate --resume %s`",
                work,
                final,
            )
        else:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if final.exists():
        final.rmdir()
    os.replace(work, final)
    # Checkpoints go only after the rename: a crash before it loses nothing.
    shutil.rmtree(final / CHECKPOINT_DIR, ignore_errors=True)


def default_run_dir(cfg: RunConfig) -> Path:
    """`out` as an absolute path; empty means ~/fedge-runs/<time>-<dataset>.

    One default for `fedge simulate` and `flwr run` alike: under `flwr run` the ServerApp's
    working directory is the SuperLink's, so a relative default would land somewhere surprising.
    """
    if cfg.out:
        return Path(cfg.out).expanduser().resolve()
    name = "npz" if cfg.dataset.startswith("npz:") else cfg.dataset
    return Path.home() / "fedge-runs" / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def partial_dir(final: Path) -> Path:
    """Where an unfinished run lives."""
    return final.with_name(final.name + ".partial")


def timestamped_out(run_dir: Path, kind: str) -> Path:
    """Where `fedge compress`/`fedge audit` write by default: RUN/<kind>/<time>, one per call."""
    return Path(run_dir) / kind / datetime.now().strftime("%Y%m%d-%H%M%S")


def final_dir(path: Path) -> Path:
    """A run's final directory, whether given as DIR or as its DIR.partial."""
    return path.with_name(path.name.removesuffix(".partial"))


def stored_config(final: Path) -> RunConfig:
    """The config an unfinished run was started with; ConfigError if it cannot be resumed."""
    work = partial_dir(final)
    if (final / RESULTS_FILE).is_file() and not work.exists():
        raise ConfigError(f"run {final} already finished; there is nothing to resume")
    path = work / RUN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{final} is not an unfinished fedge run: {path} does not exist "
            "(resume takes the run's --out directory)"
        )
    try:
        return RunConfig.from_run_config(json.loads(path.read_text()))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is not a valid fedge run config: {err}") from err


def check_resumable(final: Path, cfg: RunConfig) -> None:
    """ConfigError naming every setting that differs from the run being resumed."""
    stored = stored_config(final)
    differ = stored.incompatible_with(cfg)
    if differ:
        pairs = ", ".join(
            f"{k} (run: {stored.to_run_config()[k]!r}, now: {cfg.to_run_config()[k]!r})"
            for k in differ
        )
        raise ConfigError(f"cannot resume {final} with different settings: {pairs}")
    saved = CheckpointDir(partial_dir(final) / CHECKPOINT_DIR).latest()
    if saved is None:
        return
    now = resume_fingerprint(cfg)
    edited = [
        k for k in sorted(now.keys() | saved.config.keys()) if now.get(k) != saved.config.get(k)
    ]
    if edited:
        pairs = ", ".join(
            f"{k} (checkpoints: {saved.config.get(k)!r}, {RUN_CONFIG_FILE}: {now.get(k)!r})"
            for k in edited
        )
        raise ConfigError(
            f"{final}: the checkpoints were made with other settings than {RUN_CONFIG_FILE} "
            f"holds now: {pairs}; allowed: the settings the rounds ran with"
        )
    if cfg.rounds < saved.round:
        raise ConfigError(f"rounds={cfg.rounds} but {final} already completed round {saved.round}")


@dataclass(frozen=True)
class FinishedRun:
    """What `fedge compress` and `fedge audit` read of a finished run's results.json."""

    cfg: RunConfig  # the settings it ran with
    teacher_params: int
    student_architecture: str | None  # None: the quality gate shipped nothing
    privacy: dict[str, Any] | None

    @classmethod
    def read(cls, run_dir: Path) -> FinishedRun:
        """ConfigError naming results.json and what is wrong with it."""
        path = Path(run_dir) / RESULTS_FILE
        try:
            results = json.loads(path.read_text())
            if not isinstance(results, dict):
                raise ValueError(f"a JSON object was expected, got {type(results).__name__}")
            student = results.get("student")
            privacy = results.get("privacy")
            return cls(
                cfg=RunConfig.from_run_config(results["config"]),
                teacher_params=int(results["teacher"]["params"]),
                student_architecture=None if student is None else str(student["architecture"]),
                privacy=privacy if isinstance(privacy, dict) else None,
            )
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} has no readable config: {err}") from err


MAX_MODEL_BYTES = 2 << 30  # onnx's own limit for one protobuf


def run_model(path: Path) -> tuple[bytes, InferenceSession]:
    """A run's ONNX model file and its session; ConfigError naming the file if it does not load.

    `fedge compress` and `fedge audit` read the teacher and the bundle's student from a run
    directory anyone may have edited: a truncated or foreign file is refused before any work.
    """
    try:
        data = read_named(path, MAX_MODEL_BYTES)
        session = make_session(data)
    except Exception as err:  # noqa: BLE001 - onnxruntime's and protobuf's own exception types
        reason = " ".join(str(err).split())[:300]
        raise ConfigError(
            f"{path} is not a model onnxruntime can load ({reason}); allowed: the file the run "
            "wrote"
        ) from None
    return data, session


def check_new_out(target: Path) -> None:
    """ConfigError unless `target` can become a new output directory (absent, or empty).

    Checked before any work: a file there, a file among its parents, or a parent this process
    cannot write in would otherwise fail at the first write, after training or compression.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(
            f"out {target} already exists and is not an empty directory; choose a new --out"
        )
    parent = next((p for p in target.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"out {target} is under {parent}, a file; choose a --out in a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"out {target}: {parent} is not writable; choose another --out")
