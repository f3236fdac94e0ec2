"""`fedge audit`: online LiRA against the teacher, each compression stage and the deployed student.

Shadow pipelines replay the run's own pipeline (federated training with the run's settings on a
random half of the candidate records, then the run's stage chain) in worker processes; the
target's stages are replayed from its teacher, its student is the shipped bundle. The
orchestration lives here, in the pipeline, because it walks the same stage chain as the run;
the pure scoring (LiRA, ROC, bootstrap; the empirical epsilon bound in
fedge.privacy.epsilon_bound) stays in fedge.privacy, which imports nothing of the pipeline, so
the imports stay one-way.
"""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.bundle_format import MODEL_FILE
from fedge.core.config import ConfigError, RunConfig
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.ort import make_session, session_logits
from fedge.core.partition import build_federation
from fedge.core.training import predict_logits
from fedge.pipeline.audit.replay import Candidates, candidates, replay_training, student_replay
from fedge.pipeline.audit.report import render_audit
from fedge.pipeline.chain.federate import FederatedTrainer, saved
from fedge.pipeline.chain.stages import CompressionConfig, Inputs, compress
from fedge.pipeline.outputs.plots import roc_plot
from fedge.pipeline.rundir.paths import (
    BUNDLE_DIR,
    RESULTS_FILE,
    TEACHER_FILE,
    FinishedRun,
    run_model,
)
from fedge.privacy import lira
from fedge.privacy.epsilon_bound import CONFIDENCE, epsilon_lower_bound, record_level

log = logging.getLogger("fedge")
MODELS = ("teacher", "distilled", "pruned", "federated", "student")  # federated: if it ran
MIN_SHADOWS = 4


def model_confidences(
    teacher: torch.nn.Module,
    cfg: RunConfig,
    pool: Candidates,
    shipped: bytes | None,
    federated: FederatedTrainer | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float], bytes]:
    """Phi of every candidate under the teacher, each compression stage and the device model.

    The stages are compressed here from `teacher` by walking the run's stage chain; `shipped`
    (the target's bundle) replaces the compressed device model when given. Also returns test
    accuracies and the replayed device model's bytes.
    """
    fed = build_federation(cfg)
    prep, classes = fed.dataset.preprocessing, fed.dataset.num_classes
    server = fed.server
    inputs = Inputs(teacher, server.public_pool, server.val, server.test, prep, classes, federated)
    outcome = compress(CompressionConfig.from_run(cfg), inputs)
    device = make_session(shipped if shipped is not None else outcome.student_bytes)
    logits = {"teacher": predict_logits(teacher, pool.x)}
    logits.update({name: predict_logits(model, pool.x) for name, model in outcome.models.items()})
    logits["student"] = session_logits(device, prep.invert(pool.x))
    phi = {name: lira.logit_confidence(v, pool.y) for name, v in logits.items()}
    test = server.test
    rows = {row.name: row.accuracy for row in outcome.stages}
    accuracy = {"teacher": float((predict_logits(teacher, test.x).argmax(1) == test.y).mean())}
    accuracy.update({name: rows[name] for name in outcome.models})
    accuracy["student"] = float(
        (session_logits(device, prep.invert(test.x)).argmax(1) == test.y).mean()
    )
    return phi, accuracy, outcome.student_bytes


def stage_phi(phi: dict[str, np.ndarray], name: str) -> np.ndarray:
    """A pipeline's phi for model `name`; a stage that kept nothing passes on the model before it.

    A shadow whose federated student rounds all lowered validation discards them (as the run
    would have), so its "federated" model is its pruned one.
    """
    for earlier in reversed(MODELS[: MODELS.index(name) + 1]):
        if earlier in phi:
            return phi[earlier]
    raise KeyError(f"no model up to {name!r} in {sorted(phi)}")


def shadow_masks(records: int, shadows: int, seed: int) -> np.ndarray:
    """(shadows, records): each record is in exactly half of the shadows (Carlini et al.)."""
    rng = np.random.default_rng([seed, 7_919])
    order = np.argsort(rng.random((shadows, records)), axis=0)
    return order < shadows // 2


def shadow(
    config: dict[str, Any], index: int, shadows: int
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One shadow pipeline (run in a worker): its in-mask and phi of every model on every record."""
    torch.set_num_threads(1)
    cfg = RunConfig.from_run_config(config)
    fed = build_federation(cfg)
    pool = candidates(fed, cfg)
    inside = shadow_masks(len(pool.y), shadows, cfg.seed)[index]
    # Keep the federation's shape: a record stays with its client; test records go round-robin.
    owner = np.where(pool.owner >= 0, pool.owner, np.arange(len(pool.y)) % cfg.clients)
    sets = [
        (pool.x[inside & (owner == p)], pool.y[inside & (owner == p)]) for p in range(cfg.clients)
    ]
    # The run's own seeds (initialisation, batch order, distillation): the auditor knows the whole
    # recipe, so shadows differ from the target only in their data, the strongest setting.
    teacher = replay_training(cfg, sets, cfg.seed)
    phi, _, _ = model_confidences(teacher, cfg, pool, None, student_replay(cfg, sets, teacher))
    return inside, phi


@dataclass(frozen=True)
class AuditTarget:
    """A finished run as the audit needs it: its config, teacher, shipped student, guarantee."""

    run_dir: Path
    cfg: RunConfig
    teacher_onnx: bytes
    student_onnx: bytes
    privacy: dict[str, Any] | None


def load_target(run_dir: Path) -> AuditTarget:
    """Read a finished run; ConfigError naming what is missing."""
    run_dir = Path(run_dir)
    for name in (RESULTS_FILE, TEACHER_FILE, f"{BUNDLE_DIR}/{MODEL_FILE}"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"{run_dir} cannot be audited: {name} is missing (a finished fedge run has a "
                "teacher and a bundle)"
            )
    finished = FinishedRun.read(run_dir)
    cfg = finished.cfg
    if cfg.tiers:  # bundle/ holds the last tier's student, distilled on the public pool
        cfg = cfg.one_public_student()
    if cfg.student == "auto":  # replay the candidate the run shipped
        if finished.student_architecture is None:
            raise ConfigError(f"{run_dir / RESULTS_FILE} names no shipped student")
        cfg = cfg.replace(student=finished.student_architecture)
    return AuditTarget(
        run_dir=run_dir,
        cfg=cfg,
        teacher_onnx=run_model(run_dir / TEACHER_FILE)[0],  # both load, before any shadow
        student_onnx=run_model(run_dir / BUNDLE_DIR / MODEL_FILE)[0],
        privacy=finished.privacy,
    )


def accountant_check(models: dict[str, Any], privacy: dict[str, Any] | None) -> dict[str, Any]:
    """The largest empirical lower bound on epsilon beside what the accountant's allows a record.

    Every model is the DP-trained teacher or post-processing of it, so none may prove more than
    the run's record-level epsilon (`record_level`: central DP's client-level epsilon doubled).
    `passed` is None without DP, or when the guarantee says nothing about one record.
    """
    name = max(models, key=lambda n: models[n]["epsilon_lower_bound"]["epsilon_lower"])
    bound = models[name]["epsilon_lower_bound"]
    claimed, delta = record_level(privacy)
    return {
        "epsilon": claimed,
        "accountant_epsilon": (privacy or {}).get("epsilon"),
        "vacuous": claimed is None and (privacy or {}).get("epsilon") is not None,
        "delta": delta,
        "largest_lower_bound": bound["epsilon_lower"],
        "model": name,
        "confidence": CONFIDENCE,  # over every model together (each bound at a Bonferroni share)
        "passed": None if claimed is None else bound["epsilon_lower"] <= claimed,
    }


def check_shadows(shadows: int) -> None:
    """ConfigError unless there are enough shadows for every record to be in and out."""
    if shadows < MIN_SHADOWS:
        raise ConfigError(f"--shadows must be >= {MIN_SHADOWS} (LiRA needs in and out models for "
                          f"every record), got {shadows}")  # fmt: skip


def _train_shadows(
    config: dict[str, Any], shadows: int, workers: int, start: float
) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Every shadow pipeline, `workers` at a time, with a progress line at least every 15 s."""
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
        pending = {ex.submit(shadow, config, i, shadows): i for i in range(shadows)}
        done: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        while pending:
            finished, _ = wait(pending, timeout=15.0, return_when=FIRST_COMPLETED)
            for future in finished:
                done[pending.pop(future)] = future.result()
            elapsed = time.monotonic() - start
            left = f", about {elapsed / len(done) * len(pending):.0f} s left" if done else ""
            log.info(
                "audit: %d/%d shadow pipelines done (%d at a time), %.0f s so far%s",
                len(done),
                shadows,
                workers,
                elapsed,
                left,
            )
    return [done[i] for i in range(shadows)]


def run_audit(target: AuditTarget, shadows: int, out: Path, workers: int = 2) -> dict[str, Any]:
    """Score the run's models with online LiRA and the loss baseline; write audit.json and plots."""
    check_shadows(shadows)
    start = time.monotonic()
    cfg = target.cfg
    pool = candidates(build_federation(cfg), cfg)
    config = cfg.to_run_config()
    log.info("audit: %d shadow pipelines on %d candidate records", shadows, len(pool.y))
    results = _train_shadows(config, shadows, workers, start)
    target_phi, accuracy, replayed = model_confidences(
        OnnxTeacher(target.teacher_onnx), cfg, pool, target.student_onnx, saved(target.run_dir)
    )
    shadow_in = np.stack([r[0] for r in results])
    models: dict[str, Any] = {}
    curves = {}
    delta = record_level(target.privacy)[1]
    confidence = 1 - (1 - CONFIDENCE) / sum(name in target_phi for name in MODELS)  # together
    for name in (name for name in MODELS if name in target_phi):
        shadow_phi = np.stack([stage_phi(r[1], name) for r in results])
        scores = lira.lira_scores(target_phi[name], shadow_phi, shadow_in)
        attack, baseline = lira.roc(scores, pool.members), lira.roc(target_phi[name], pool.members)
        models[name] = {
            "auc": attack.auc,
            "tpr_at_1pct_fpr": attack.tpr_at_1pct_fpr,
            "tpr_at_0_1pct_fpr": attack.tpr_at_0_1pct_fpr,
            "ci95": lira.bootstrap(scores, pool.members),
            "epsilon_lower_bound": epsilon_lower_bound(
                scores, pool.members, delta, confidence=confidence
            ).to_json(),
            "accuracy": accuracy[name],
            "loss_threshold": {
                "auc": baseline.auc,
                "tpr_at_1pct_fpr": baseline.tpr_at_1pct_fpr,
                "tpr_at_0_1pct_fpr": baseline.tpr_at_0_1pct_fpr,
            },
        }
        curves[name] = lira.roc_curve_points(scores, pool.members)
    audit = {
        "run": str(target.run_dir),
        "models": models,
        "shadows": shadows,
        "attack": "online LiRA (Carlini et al. 2022), per-record means, global variances; "
        "shadows replay the run's recipe and seeds on half of the candidate records each",
        "candidates": {
            "members": int(pool.members.sum()),
            "non_members": int((~pool.members).sum()),
        },
        "privacy": target.privacy,
        "accountant_check": accountant_check(models, target.privacy),
        # The replayed chain on the target's teacher: byte-identical to what was shipped when
        # the compression is reproducible (the stage rows above come from this replay).
        "replayed_student_sha256": hashlib.sha256(replayed).hexdigest(),
        "shipped_student_sha256": hashlib.sha256(target.student_onnx).hexdigest(),
        "seconds": time.monotonic() - start,
    }
    atomic_write_json(out / "audit.json", audit)
    atomic_write_bytes(out / "roc.png", roc_plot(curves, models))
    atomic_write_bytes(out / "audit.md", render_audit(audit).encode())
    return audit
