"""One whole run on the server: train the teacher, compress, sign, redistribute, report."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from fedge.compression.bundle import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    generate_keypair,
    load_private_key,
    public_pem,
    write_bundle,
)
from fedge.compression.export import (
    ExportConfig,
    export_onnx,
)
from fedge.core.config import ConfigError, RunConfig
from fedge.core.faults import byzantine_partitions, straggler_delay
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.models import build_teacher, count_params
from fedge.core.partition import build_federation
from fedge.core.records import model_spec
from fedge.core.training import get_weights, weights_sha256
from fedge.privacy import ledger
from fedge.server.checkpoint import CheckpointDir
from fedge.server.compression_phase import CompressionConfig, run_compression
from fedge.server.deploy import deploy_bundle
from fedge.server.ensemble import ensemble_source, global_source
from fedge.server.report import render_report, write_plot
from fedge.server.shipping import ship
from fedge.server.training_loop import train_teacher

log = logging.getLogger("fedge")
RESULTS_FILE = "results.json"
TEACHER_FILE = "teacher.onnx"
RUN_CONFIG_FILE = "run-config.json"
CHECKPOINT_DIR = "checkpoints"


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


def run_server(grid: Grid, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Everything the ServerApp does, writing into `run_dir` (which must exist)."""
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # Flower's DP wrappers draw their noise from numpy's global RNG
    fed = build_federation(cfg)
    server, classes = fed.server, fed.dataset.num_classes
    shape = fed.dataset.preprocessing.input_shape
    if cfg.resume:
        check_resumable(final_dir(run_dir), cfg)
    else:
        atomic_write_json(run_dir / RUN_CONFIG_FILE, cfg.to_run_config())
    key = _signing_key(cfg, run_dir)
    teacher = build_teacher(shape, classes, cfg.seed, cfg.teacher)
    log.info(
        "training a %d-parameter teacher: %d clients x %d rounds",
        count_params(teacher),
        cfg.clients,
        cfg.rounds,
    )
    spec = model_spec(fed.dataset.preprocessing, classes)
    checkpoints = CheckpointDir(run_dir / CHECKPOINT_DIR)
    training = train_teacher(grid, cfg, teacher, server.test, spec, checkpoints)
    final_sha256 = weights_sha256(get_weights(teacher))
    t1 = time.monotonic()

    teacher_onnx = export_onnx(teacher, shape, ExportConfig())
    atomic_write_bytes(run_dir / TEACHER_FILE, teacher_onnx)
    source = global_source(teacher, server.public_pool, CompressionConfig.from_run(cfg))
    if cfg.teacher_mode == "ensemble":
        source = ensemble_source(
            grid,
            cfg,
            teacher,
            server.public_pool,
            source.compression,
            nodes=training.last_round_nodes,
            spec=spec,
            run_dir=run_dir,
        )
    compression = source.compression
    prep = fed.dataset.preprocessing
    outcome = run_compression(
        source.teacher,
        source.pool,
        server.val,
        server.test,
        compression,
        preprocessing=prep,
        num_classes=classes,
    )
    shipment = ship(
        teacher_onnx,
        outcome,
        compression,
        server.test,
        preprocessing=prep,
        num_classes=classes,
        key=key,
        model_id=final_dir(run_dir).name,
    )
    files, manifest = shipment.files, shipment.manifest
    write_bundle(files, run_dir / "bundle")
    t2 = time.monotonic()

    clients, deploy_bytes = deploy_bundle(
        grid,
        cfg,
        files,
        store_root=run_dir / "nodes",
        trusted_key=run_dir / "keys" / PUBLIC_KEY_FILE,
        node_partition=training.node_partition,
        spec=spec,
    )
    for row in clients:
        row["teacher_accuracy"] = training.client_teacher_accuracy.get(row["partition_id"])
    t3 = time.monotonic()
    results = {
        "run_id": manifest.model_id,
        "config": cfg.to_run_config(),
        "compression_config": compression.to_json(),
        "ensemble": source.summary,
        "rounds": training.rounds,
        "rejected": training.rejected,
        "faults": _faults(cfg),
        "privacy": ledger.summary(cfg, training.rounds),
        "resumed_from": training.resumed_from,
        "final_model_sha256": final_sha256,
        "teacher": {**shipment.teacher, "params": count_params(teacher)},
        "stages": outcome.stages,
        "student": shipment.student,
        "clients": clients,
        "communication": {"train_bytes": training.train_bytes, "deploy_bytes": deploy_bytes},
        "timing_s": {
            "total": t3 - t0,
            "training": t1 - t0,
            "compression": t2 - t1,
            "deploy": t3 - t2,
        },
    }
    atomic_write_json(run_dir / RESULTS_FILE, results)
    atomic_write_bytes(run_dir / "report.md", render_report(results).encode())
    write_plot(results, run_dir)
    return results


def _signing_key(cfg: RunConfig, run_dir: Path) -> Any:
    """The configured private key, or a fresh pair for this run; the public half in keys/."""
    keys = run_dir / "keys"
    if (keys / PRIVATE_KEY_FILE).is_file():  # a resumed run signs with the key it started with
        key = load_private_key(keys / PRIVATE_KEY_FILE)
        atomic_write_bytes(keys / PUBLIC_KEY_FILE, public_pem(key))
        return key
    if cfg.private_key:
        key = load_private_key(Path(cfg.private_key))
        atomic_write_bytes(keys / PUBLIC_KEY_FILE, public_pem(key))
        return key
    private_path, _ = generate_keypair(keys)
    return load_private_key(private_path)


def _faults(cfg: RunConfig) -> dict[str, Any]:
    """The injected faults and the defences, as configured (per-round roles are in rounds[])."""
    return {
        "aggregation": cfg.aggregation,
        "norm_outlier_factor": cfg.norm_outlier_factor,
        "min_clients": cfg.min_clients,
        "byzantine_mode": cfg.byzantine_mode if cfg.byzantine_fraction else None,
        "byzantine_partitions": sorted(byzantine_partitions(cfg)),
        "byzantine_scale": cfg.byzantine_scale,
        "dropout_fraction": cfg.dropout_fraction,
        "straggler_fraction": cfg.straggler_fraction,
        "straggler_delay_s": straggler_delay(cfg) if cfg.straggler_fraction else None,
    }
