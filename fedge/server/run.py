"""One whole run on the server: Flower training, then the pipeline, then Flower redistribution."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp import Grid

from fedge.compression.bundle import PUBLIC_KEY_FILE
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.config import RunConfig
from fedge.core.io import atomic_write_json
from fedge.core.models import build_teacher, count_params
from fedge.core.partition import build_federation
from fedge.core.profile import Profile
from fedge.core.records import model_spec
from fedge.core.training import get_weights, weights_sha256
from fedge.pipeline.chain.federate import FederatedTrainer, recording
from fedge.pipeline.chain.teacher_source import global_source
from fedge.pipeline.outputs.results import run_results, write_run_outputs
from fedge.pipeline.outputs.tensorboard import RoundScalars
from fedge.pipeline.rundir.checkpoint import CheckpointDir
from fedge.pipeline.rundir.paths import (
    CHECKPOINT_DIR,
    KEYS_DIR,
    NODES_DIR,
    RUN_CONFIG_FILE,
    check_resumable,
    final_dir,
)
from fedge.pipeline.ship.gate import NotShippedError
from fedge.pipeline.ship.phase import (
    compress_and_ship,
    discard_shipped,
    load_shipped,
    not_shipped_record,
    save_shipped,
    signing_key,
    write_teacher,
)
from fedge.pipeline.ship.tiers import (
    TIERS_FILE,
    clear_tiers,
    compress_tiers,
    load_tiers,
    save_tiers,
    tier_summary,
)
from fedge.server.deploy import deploy_bundle, not_deployed
from fedge.server.ensemble import ensemble_source
from fedge.server.student_rounds import flower_trainer
from fedge.server.tiers import node_tiers, tier_profiles
from fedge.server.training_loop import train_teacher

log = logging.getLogger("fedge")


def sampling_secret(key: Any) -> int:
    """A seed only this server knows (from its signing key; the same after a resume)."""
    from cryptography.hazmat.primitives import serialization

    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return int.from_bytes(hashlib.sha256(b"fedge client sampling" + raw).digest()[:8], "big")


def run_server(grid: Grid, cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Everything the ServerApp does, writing into `run_dir` (which must exist)."""
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # Flower's DP wrappers draw their noise from numpy's global RNG
    fed = build_federation(cfg)
    classes, prep = fed.dataset.num_classes, fed.dataset.preprocessing
    if cfg.resume:
        check_resumable(final_dir(run_dir), cfg)
    else:
        atomic_write_json(run_dir / RUN_CONFIG_FILE, cfg.to_run_config())
    key = signing_key(cfg, run_dir)
    teacher = build_teacher(prep.input_shape, classes, cfg.seed, cfg.teacher)
    log.info(
        "training a %d-parameter teacher: %d clients x %d rounds",
        count_params(teacher),
        cfg.clients,
        cfg.rounds,
    )
    spec = model_spec(prep, classes)
    checkpoints = CheckpointDir(run_dir / CHECKPOINT_DIR)
    with closing(RoundScalars(run_dir)) as scalars:  # per-round TensorBoard curves
        secret = sampling_secret(key)
        training = train_teacher(
            grid, cfg, teacher, fed.server.test, spec, checkpoints, scalars, secret
        )
        final_sha256 = weights_sha256(get_weights(teacher))
        t1 = time.monotonic()

        teacher_onnx = write_teacher(teacher, fed, run_dir)
        # Distil from the teacher as saved (onnxruntime), as `fedge compress` and the audit do: the
        # same logits to the last bit, so all three build the same student bytes.
        kd_teacher = OnnxTeacher(teacher_onnx)
        source = global_source(kd_teacher, fed.server.public_pool)
        if cfg.teacher_mode == "ensemble":
            nodes = training.last_round_nodes
            source = ensemble_source(
                grid,
                cfg,
                kd_teacher,
                fed.server.public_pool,
                nodes=nodes,
                spec=spec,
                run_dir=run_dir,
            )
        model_id = final_dir(run_dir).name
        node_tier = node_tiers(grid, cfg, training.node_partition) if cfg.tiers else {}
        compression, files, tier_records, tier_bundles = _compression_phase(
            grid,
            cfg,
            run_dir,
            fed,
            source,
            teacher_onnx,
            key,
            trainer_for=lambda: recording(
                flower_trainer(grid, cfg, spec, final_sha256, fed.server.test, scalars), run_dir
            ),
            profiles_for=lambda: tier_profiles(grid, cfg, node_tier),
        )
        t2 = time.monotonic()

        clients, deploy_bytes = not_deployed(training.node_partition), 0
        if files:
            clients, deploy_bytes = deploy_bundle(
                grid,
                cfg,
                files,
                simulation_store_root=run_dir / NODES_DIR,
                simulation_trusted_key=run_dir / KEYS_DIR / PUBLIC_KEY_FILE,
                node_partition=training.node_partition,
                spec=spec,
                # asked again: a node may have joined or reconnected since compression began
                tiers=(tier_bundles, node_tiers(grid, cfg, training.node_partition))
                if tier_bundles
                else None,
            )
        for row in clients:
            row["teacher_accuracy"] = training.client_teacher_accuracy.get(row["partition_id"])
        t3 = time.monotonic()
        results = run_results(
            cfg,
            model_id=model_id,
            training=training,
            final_sha256=final_sha256,
            teacher_params=count_params(teacher),
            compression=compression,
            clients=clients,
            deploy_bytes=deploy_bytes,
            timing={
                "total": t3 - t0,
                "training": t1 - t0,
                "compression": t2 - t1,
                "deploy": t3 - t2,
            },
        )
        if tier_records:
            results["tiers"] = tier_summary(tier_records, clients)
        write_run_outputs(results, run_dir)
        return results


def _compression_phase(
    grid: Grid,
    cfg: RunConfig,
    run_dir: Path,
    fed: Any,
    source: Any,
    teacher_onnx: bytes,
    key: Any,
    trainer_for: Callable[[], FederatedTrainer],
    profiles_for: Callable[[], dict[str, list[Profile | None]]],
) -> tuple[dict[str, Any], dict[str, bytes], list[dict[str, Any]], dict[str, dict[str, bytes]]]:
    """The compressed record and bundle files (and each tier's), made now or by an earlier try.

    `trainer_for()` builds the student rounds' trainer when the settings ask for them.
    `profiles_for()` asks the nodes for their device profiles when tiers are compressed.
    """
    model_id = final_dir(run_dir).name
    shipped = load_shipped(run_dir) if cfg.resume else None
    saved_tiers = load_tiers(run_dir, cfg.tier_budgets) if shipped and cfg.tiers else None
    tiers_changed = bool(cfg.tiers) != (run_dir / TIERS_FILE).is_file()
    if shipped is not None and ((cfg.tiers and saved_tiers is None) or tiers_changed):
        shipped = None  # the tiers' bundles are incomplete, or for other tiers (or none)
        discard_shipped(run_dir)
    tier_records, tier_bundles = saved_tiers or ([], {})
    if shipped is None:
        clear_tiers(run_dir)  # whatever an interrupted try left
    if shipped is not None:
        log.info(
            "resuming with the bundle this run already made (version %d)",
            shipped[0]["student"]["version"],
        )
        return shipped[0], shipped[1], tier_records, tier_bundles
    # the student's rounds on the clients, saved for replays
    trainer = trainer_for() if cfg.distill_from != "public" else None
    try:
        if cfg.tiers:
            compressed, tier_records, tier_bundles = compress_tiers(
                cfg, source, fed, teacher_onnx, key, model_id, profiles_for()
            )
            save_tiers(run_dir, tier_records, tier_bundles)
        else:
            compressed = compress_and_ship(
                cfg, source, fed, teacher_onnx, key, model_id, federated=trainer
            )
        return (
            save_shipped(compressed, run_dir),
            compressed.shipment.files,
            tier_records,
            tier_bundles,
        )
    except NotShippedError as stop:
        return not_shipped_record(stop.gate, teacher_onnx, fed, source), {}, [], {}
