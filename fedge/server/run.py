"""One whole run on the server: Flower training, then the pipeline's compression, then redistribution."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.serverapp import Grid

from fedge.compression.bundle import PUBLIC_KEY_FILE
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.config import RunConfig
from fedge.core.io import atomic_write_json
from fedge.core.models import build_teacher, count_params
from fedge.core.partition import Federation, build_federation
from fedge.core.records import model_spec
from fedge.core.training import get_weights, weights_sha256
from fedge.pipeline.chain.federate import FederatedTrainer, once_under_dp, recording
from fedge.pipeline.chain.teacher_source import KdSource, global_source
from fedge.pipeline.outputs.results import RunResults, run_results, write_run_outputs
from fedge.pipeline.outputs.rows import ClientRow
from fedge.pipeline.outputs.tensorboard import RoundScalars
from fedge.pipeline.rundir.checkpoint import CheckpointDir, TrainingLog
from fedge.pipeline.rundir.paths import (
    CHECKPOINT_DIR,
    KEYS_DIR,
    NODES_DIR,
    RUN_CONFIG_FILE,
    check_resumable,
    final_dir,
)
from fedge.pipeline.ship.job import CompressionJob
from fedge.pipeline.ship.keys import signing_key, write_teacher
from fedge.pipeline.ship.phase import ClientCalls, PhaseResult, compression_phase
from fedge.pipeline.ship.tiers import MEASURED, TierTools
from fedge.privacy.ledger import TEACHER_RELEASE, Release
from fedge.server.deploy import deploy_bundle, not_deployed
from fedge.server.ensemble import ensemble_source
from fedge.server.nodes import Nodes
from fedge.server.student_rounds import flower_trainer
from fedge.server.tiers import node_tiers, tier_profiles
from fedge.server.training_loop import RoundLoop, train_teacher

log = logging.getLogger("fedge")


def sampling_secret(key: Ed25519PrivateKey) -> int:
    """A seed only this server knows (from its signing key; the same after a resume)."""
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return int.from_bytes(hashlib.sha256(b"fedge client sampling" + raw).digest()[:8], "big")


def noise_secret(key: Ed25519PrivateKey) -> list[int]:
    """256 secret bits for central DP's noise (from the signing key; the same after a resume)."""
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    digest = hashlib.sha256(b"fedge central dp noise" + raw).digest()
    return [int.from_bytes(digest[i : i + 4], "big") for i in range(0, 32, 4)]


def run_server(
    grid: Grid, cfg: RunConfig, run_dir: Path, tools: TierTools = MEASURED
) -> RunResults:
    """Everything the ServerApp does, writing into `run_dir` (which must exist).

    `tools`: how device tiers search and time students (tests pass known latencies).
    """
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    fed = build_federation(cfg)
    key = _start(cfg, run_dir)
    prep, classes = fed.dataset.preprocessing, fed.dataset.num_classes
    teacher = _teacher(cfg, prep.input_shape, classes)
    spec = model_spec(prep, classes)
    loop = RoundLoop(Nodes(), sampling_secret(key))
    with closing(RoundScalars(run_dir)) as scalars:  # per-round TensorBoard curves
        checkpoints = CheckpointDir(run_dir / CHECKPOINT_DIR)
        training = train_teacher(
            grid, cfg, teacher, fed.server.test, spec, checkpoints, scalars, loop
        )
        final_sha256 = weights_sha256(get_weights(teacher))
        t1 = time.monotonic()
        teacher_onnx = write_teacher(teacher, prep.input_shape, run_dir)
        source = _kd_source(grid, cfg, fed, teacher_onnx, loop, spec, run_dir)
        job = CompressionJob(cfg, source, fed, teacher_onnx, key, final_dir(run_dir).name)
        releases: list[Release] = [(TEACHER_RELEASE, training.rounds)]  # the privacy ledger's
        calls = ClientCalls(
            student_rounds=lambda: _student_rounds(
                flower_trainer(
                    grid, cfg, spec, final_sha256, fed.server.test, scalars, loop, releases
                ),
                cfg,
                run_dir,
                releases,
            ),
            node_profiles=lambda: tier_profiles(grid, cfg, node_tiers(grid, cfg, loop.nodes)),
        )
        phase = compression_phase(job, run_dir, calls, resume=cfg.resume, tools=tools)
        t2 = time.monotonic()
        clients, deploy_bytes = _deploy(grid, cfg, phase, run_dir, loop.nodes, spec, training)
        t3 = time.monotonic()
    results = run_results(
        cfg,
        model_id=job.model_id,
        training=training,
        final_sha256=final_sha256,
        teacher_params=count_params(teacher),
        compression=phase.record,
        clients=clients,
        deploy_bytes=deploy_bytes,
        timing={"total": t3 - t0, "training": t1 - t0, "compression": t2 - t1, "deploy": t3 - t2},
        tiers=phase.tiers,
        student_releases=releases[1:],
    )
    write_run_outputs(results, run_dir)
    if results.deployment is not None and not results.deployment.passed:
        log.error("deployment FAILED: %s (see report.md)", results.deployment.reason)
    return results


def _student_rounds(
    trainer: FederatedTrainer, cfg: RunConfig, run_dir: Path, releases: list[Release]
) -> FederatedTrainer:
    """The student's rounds as the run trains them: under DP, once per run (resumes included).

    Each result is saved for `fedge compress` and the audit.
    """
    saving = recording(trainer, run_dir)
    return saving if cfg.dp == "none" else once_under_dp(saving, run_dir, releases)


def _teacher(cfg: RunConfig, input_shape: tuple[int, ...], classes: int) -> torch.nn.Module:
    """The teacher the rounds start from (logged with its size)."""
    teacher = build_teacher(input_shape, classes, cfg.seed, cfg.teacher)
    shape = (count_params(teacher), cfg.clients, cfg.rounds)
    log.info("training a %d-parameter teacher: %d clients x %d rounds", *shape)
    return teacher


def _start(cfg: RunConfig, run_dir: Path) -> Ed25519PrivateKey:
    """Check a resume against its checkpoints, or record the settings; the run's signing key.

    Under central DP numpy's global generator, which Flower's DP wrappers draw their noise
    from, is seeded from a secret of that key, not from the seed every client knows.
    """
    if cfg.resume:
        check_resumable(final_dir(run_dir), cfg)
    else:
        atomic_write_json(run_dir / RUN_CONFIG_FILE, cfg.to_run_config())
    key = signing_key(cfg, run_dir)
    if cfg.dp == "central":
        np.random.seed(noise_secret(key))
    return key


def _kd_source(
    grid: Grid,
    cfg: RunConfig,
    fed: Federation,
    teacher_onnx: bytes,
    loop: RoundLoop,
    spec: dict[str, Any],
    run_dir: Path,
) -> KdSource:
    """What the student learns from: the teacher as saved, or the last round's clients' ensemble.

    Distillation asks the teacher as saved (onnxruntime), as `fedge compress` and the audit do:
    the same logits to the last bit, so all three build the same student bytes.
    """
    kd_teacher = OnnxTeacher(teacher_onnx)
    if cfg.teacher_mode != "ensemble":
        return global_source(kd_teacher, fed.server.public_pool)
    return ensemble_source(
        grid,
        cfg,
        kd_teacher,
        fed.server.public_pool,
        nodes=loop.last_round_nodes,
        spec=spec,
        run_dir=run_dir,
    )


def _deploy(
    grid: Grid,
    cfg: RunConfig,
    phase: PhaseResult,
    run_dir: Path,
    nodes: Nodes,
    spec: dict[str, Any],
    training: TrainingLog,
) -> tuple[list[ClientRow], int]:
    """Every client's install verdict (none when nothing shipped) and the bytes sent."""
    clients, deploy_bytes = not_deployed(nodes), 0
    if phase.files:
        clients, deploy_bytes = deploy_bundle(
            grid,
            cfg,
            phase.files,
            simulation_store_root=run_dir / NODES_DIR,
            simulation_trusted_key=run_dir / KEYS_DIR / PUBLIC_KEY_FILE,
            nodes=nodes,
            spec=spec,
            # asked again: a node may have joined or reconnected since compression began
            tiers=(phase.tier_bundles, node_tiers(grid, cfg, nodes))
            if phase.tier_bundles
            else None,
        )
    accuracy = training.client_teacher_accuracy  # the final teacher on the same local splits
    return [
        dataclasses.replace(row, teacher_accuracy=accuracy.get(row.partition_id))
        if row.partition_id is not None
        else row
        for row in clients
    ], deploy_bytes
