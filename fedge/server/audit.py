"""`fedge audit`: online LiRA against the teacher, each compression stage and the deployed student.

Shadow pipelines replay the run's own pipeline (federated training with the run's settings on a
random half of the candidate records, then distill -> prune -> quantize -> device model) in
worker processes; the target's stages are replayed from its teacher, its student is the shipped
bundle. Candidates: every client record (the target's members are the client training splits)
plus the central test split (never trained on).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
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
from fedge.core.models import build_teacher
from fedge.core.ort import make_session, session_logits
from fedge.core.partition import Federation, build_federation, client_indices
from fedge.core.training import client_seed, get_weights, predict_logits, set_weights, train
from fedge.privacy import central, lira
from fedge.privacy import local as local_dp
from fedge.server.compression_phase import (
    CompressionConfig,
    distill_stage,
    package_stage,
    prune_stage,
)
from fedge.server.run import RESULTS_FILE, TEACHER_FILE

log = logging.getLogger("fedge")
MODELS = ("teacher", "distilled", "pruned", "student")
MIN_SHADOWS = 4


@dataclass(frozen=True)
class Candidates:
    """The records the attack scores: preprocessed inputs, labels, target membership."""

    x: np.ndarray
    y: np.ndarray
    members: np.ndarray  # in the target's training data
    owner: np.ndarray  # client partition of each record; -1: the central test split


def candidates(fed: Federation, cfg: RunConfig) -> Candidates:
    """All client records (members: the training splits) and the central test split."""
    members = np.zeros(len(fed.client_y), dtype=bool)
    owner = np.full(len(fed.client_y), -1)
    for pid in range(cfg.clients):
        train_idx, test_idx = client_indices(fed, pid, cfg)
        members[train_idx] = True
        owner[np.concatenate([train_idx, test_idx])] = pid
    test = fed.server.test
    return Candidates(
        x=np.concatenate([fed.client_x, test.x]),
        y=np.concatenate([fed.client_y, test.y]),
        members=np.concatenate([members, np.zeros(len(test.y), dtype=bool)]),
        owner=np.concatenate([owner, np.full(len(test.y), -1)]),
    )


def replay_training(cfg: RunConfig, client_sets: list[tuple[np.ndarray, np.ndarray]], seed: int):
    """The run's federated training without Flower: FedAvg rounds over `client_sets`.

    Central DP clips each update and adds the wrapper's noise; local DP trains with DP-SGD.
    """
    fed = build_federation(cfg)
    shape, classes = fed.dataset.preprocessing.input_shape, fed.dataset.num_classes
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_teacher(shape, classes, seed, cfg.teacher)
    global_w: dict[str, np.ndarray] = dict(get_weights(model))
    clip = cfg.dp_clip
    noise = central.central_noise(cfg) if cfg.dp == "central" else 0.0
    count_std = central.count_noise(cfg, noise) if cfg.dp_clip_mode == "adaptive" else None
    for server_round in range(1, cfg.rounds + 1):
        updates, weights = [], []
        for pid, (x, y) in enumerate(client_sets):
            if len(y) == 0:
                continue
            local = copy.deepcopy(model)
            set_weights(local, global_w)
            local_seed = client_seed(seed, server_round, pid)
            if cfg.dp == "local":
                local_dp.dp_sgd_train(
                    local, x, y, schedule=local_dp.plan(len(y), cfg), epochs=cfg.local_epochs,
                    lr=cfg.lr, batch_size=cfg.batch_size, clip=cfg.dp_clip, seed=local_seed,
                )  # fmt: skip
            else:
                train(local, x, y, epochs=cfg.local_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                      seed=local_seed)  # fmt: skip
            new = get_weights(local)
            updates.append({k: new[k] - global_w[k] for k in global_w})
            weights.append(1.0 if cfg.dp == "central" else float(len(y)))
        if cfg.dp == "central":
            clipped = sum(_norm(u) > clip for u in updates)
            updates = [_clip(u, clip) for u in updates]
        total = sum(weights)
        mean = {k: sum(w * u[k] for w, u in zip(weights, updates, strict=True)) / total
                for k in global_w}  # fmt: skip
        if cfg.dp == "central":
            next_clip, on_model = clip, noise
            if count_std is not None:  # as central's wrappers: count, noise, then move the norm
                fraction = float(rng.normal(clipped, count_std)) / len(updates)
                next_clip = central.next_clipping_norm(clip, fraction, cfg)
                on_model = central.model_noise(noise, count_std)
            std = on_model * clip / cfg.clients
            mean = {k: v + rng.normal(0, std, v.shape).astype(v.dtype) for k, v in mean.items()}
            clip = next_clip
        global_w = {k: (global_w[k] + mean[k]).astype(global_w[k].dtype) for k in global_w}
    set_weights(model, global_w)
    return model.eval()


def _norm(update: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in update.values())))


def _clip(update: dict[str, np.ndarray], norm: float) -> dict[str, np.ndarray]:
    scale = min(1.0, norm / max(_norm(update), 1e-12))
    return {k: v * scale for k, v in update.items()}


def model_confidences(
    teacher: torch.nn.Module, cfg: RunConfig, pool: Candidates, student_bytes: bytes | None
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Phi of every candidate under the teacher, each compression stage and the device model.

    The stages are compressed here from `teacher` with the run's settings; `student_bytes`
    replaces the compressed device model (the target's shipped bundle). Also test accuracies.
    """
    fed = build_federation(cfg)
    prep, classes = fed.dataset.preprocessing, fed.dataset.num_classes
    compression = CompressionConfig.from_run(cfg)
    public, val, test = fed.server.public_pool, fed.server.val, fed.server.test
    student, distill_row = distill_stage(
        teacher,
        public,
        test,
        compression.distill,
        input_shape=prep.input_shape,
        num_classes=classes,
    )
    pruned, prune_row = prune_stage(
        student, teacher, public, test, compression.prune, input_shape=prep.input_shape
    )
    if student_bytes is None:
        student_bytes = package_stage(
            pruned, public, val, test, compression, preprocessing=prep, stages=[]
        ).student_bytes
    device = make_session(student_bytes)
    logits = {
        "teacher": predict_logits(teacher, pool.x),
        "distilled": predict_logits(student, pool.x),
        "pruned": predict_logits(pruned, pool.x),
        "student": session_logits(device, prep.invert(pool.x)),
    }
    phi = {name: lira.logit_confidence(v, pool.y) for name, v in logits.items()}
    raw_test = prep.invert(test.x)
    accuracy = {
        "teacher": float((predict_logits(teacher, test.x).argmax(1) == test.y).mean()),
        "distilled": distill_row["accuracy"],
        "pruned": prune_row["accuracy"],
        "student": float((session_logits(device, raw_test).argmax(1) == test.y).mean()),
    }
    return phi, accuracy


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
    phi, _ = model_confidences(teacher, cfg, pool, None)
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
    for name in (RESULTS_FILE, TEACHER_FILE, f"bundle/{MODEL_FILE}"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"{run_dir} cannot be audited: {name} is missing (a finished fedge run has a "
                "teacher and a bundle)"
            )
    try:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
        cfg = RunConfig.from_run_config(results["config"])
    except (ValueError, KeyError) as err:
        raise ConfigError(f"{run_dir / RESULTS_FILE} has no readable config: {err}") from err
    return AuditTarget(
        run_dir=run_dir,
        cfg=cfg,
        teacher_onnx=(run_dir / TEACHER_FILE).read_bytes(),
        student_onnx=(run_dir / "bundle" / MODEL_FILE).read_bytes(),
        privacy=results.get("privacy"),
    )


def check_shadows(shadows: int) -> None:
    """ConfigError unless there are enough shadows for every record to be in and out."""
    if shadows < MIN_SHADOWS:
        raise ConfigError(f"--shadows must be >= {MIN_SHADOWS} (LiRA needs in and out models for "
                          f"every record), got {shadows}")  # fmt: skip


def run_audit(target: AuditTarget, shadows: int, out: Path, workers: int = 2) -> dict[str, Any]:
    """Score the run's models with online LiRA and the loss baseline; write audit.json and plots."""
    check_shadows(shadows)
    start = time.monotonic()
    cfg = target.cfg
    pool = candidates(build_federation(cfg), cfg)
    config = cfg.to_run_config()
    log.info("audit: %d shadow pipelines on %d candidate records", shadows, len(pool.y))
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as ex:
        results = list(ex.map(shadow, [config] * shadows, range(shadows), [shadows] * shadows))
    target_phi, accuracy = model_confidences(
        OnnxTeacher(target.teacher_onnx), cfg, pool, target.student_onnx
    )
    shadow_in = np.stack([r[0] for r in results])
    models: dict[str, Any] = {}
    curves = {}
    for name in MODELS:
        shadow_phi = np.stack([r[1][name] for r in results])
        scores = lira.lira_scores(target_phi[name], shadow_phi, shadow_in)
        attack, baseline = lira.roc(scores, pool.members), lira.roc(target_phi[name], pool.members)
        models[name] = {
            "auc": attack.auc,
            "tpr_at_1pct_fpr": attack.tpr_at_1pct_fpr,
            "tpr_at_0_1pct_fpr": attack.tpr_at_0_1pct_fpr,
            "ci95": lira.bootstrap(scores, pool.members),
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
        "seconds": time.monotonic() - start,
    }
    atomic_write_json(out / "audit.json", audit)
    atomic_write_bytes(out / "roc.png", _plot(curves, models))
    atomic_write_bytes(out / "audit.md", render_audit(audit).encode())
    return audit


AUDIT_HEADING = "## Membership-inference audit"


def render_audit(audit: dict[str, Any]) -> str:
    """audit.md: one row per model, then how the student compares with the teacher."""
    lines = [
        AUDIT_HEADING,
        "",
        f"{audit['attack']}, {audit['shadows']} shadow pipelines; {audit['candidates']['members']} "
        f"member and {audit['candidates']['non_members']} non-member records. Chance: TPR = FPR.",
        "",
        "| model | test accuracy | AUC | TPR @ 1 % FPR (95 % CI) | TPR @ 0.1 % FPR | loss-threshold AUC |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, m in audit["models"].items():
        low, high = m["ci95"]["tpr_at_1pct_fpr"]
        lines.append(
            f"| {name} | {100 * m['accuracy']:.2f} % | {m['auc']:.3f} | "
            f"{100 * m['tpr_at_1pct_fpr']:.2f} % ({100 * low:.2f} to {100 * high:.2f}) | "
            f"{100 * m['tpr_at_0_1pct_fpr']:.2f} % | {m['loss_threshold']['auc']:.3f} |"
        )
    teacher, student = audit["models"]["teacher"], audit["models"]["student"]
    if teacher["tpr_at_1pct_fpr"] > 0:
        lines += [
            "",
            f"The deployed student's TPR at 1 % FPR is "
            f"{student['tpr_at_1pct_fpr'] / teacher['tpr_at_1pct_fpr']:.2f}x the teacher's; its "
            f"accuracy is {100 * (student['accuracy'] - teacher['accuracy']):+.2f} points from "
            "the teacher's.",
        ]
    privacy = audit.get("privacy") or {}
    if privacy.get("epsilon") is not None:
        lines += [
            "",
            f"Trained with DP ({privacy['mode']}): epsilon {privacy['epsilon']:.2f} at delta "
            f"{privacy['delta']:g}.",
        ]
    return "\n".join(lines) + "\n"


def add_to_report(run_dir: Path, audit_dir: Path) -> None:
    """Put the audit's section into the run's report.md, replacing an earlier audit's."""
    report = run_dir / "report.md"
    text = report.read_text() if report.exists() else ""
    before, _, after = text.partition(AUDIT_HEADING)
    rest = after.partition("\n## ")[2] if after else ""  # sections after the old audit's
    section = (audit_dir / "audit.md").read_text().rstrip() + "\n\n"
    try:
        where = audit_dir.relative_to(run_dir.resolve())
    except ValueError:
        where = audit_dir
    section += f"Files: `{where}/` (audit.json, audit.md, roc.png).\n"
    parts = [before.rstrip() + "\n\n" if before.strip() else "", section]
    if rest:
        parts.append("\n## " + rest)
    atomic_write_bytes(report, "".join(parts).encode())


def _plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], models: dict[str, Any]) -> bytes:
    """Log-log ROC of every model, with the chance line."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, (fpr, tpr) in curves.items():
        ax.plot(np.maximum(fpr, 1e-4), np.maximum(tpr, 1e-4),
                label=f"{name} (AUC {models[name]['auc']:.3f})")  # fmt: skip
    ax.plot([1e-4, 1], [1e-4, 1], "k:", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(1e-3, 1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title("LiRA membership inference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()
