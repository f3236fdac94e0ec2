"""Membership-inference scoring: LiRA (Carlini et al. 2022) and the loss-threshold baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The logit-scaled confidence log(p_y / (1 - p_y)) of the true class, computed stably."""
    logits = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(labels))
    others = logits.copy()
    others[rows, labels] = -np.inf
    return logits[rows, labels] - logsumexp(others, axis=1)


def lira_scores(target: np.ndarray, shadows: np.ndarray, shadow_in: np.ndarray) -> np.ndarray:
    """Online LiRA: log-likelihood ratio of `target` phi under each point's in vs out Gaussians.

    `shadows` (K, N) holds each shadow model's phi on every candidate, `shadow_in` (K, N) whether
    the candidate was in that shadow's training data. Per-point means, one global standard
    deviation per side (Carlini et al.'s choice when shadows are few).
    """
    shadow_in = shadow_in.astype(bool)
    counts_in, counts_out = shadow_in.sum(0), (~shadow_in).sum(0)
    if (counts_in == 0).any() or (counts_out == 0).any():
        raise ValueError("every candidate must be in at least one shadow and out of another")
    mean_in = np.where(shadow_in, shadows, 0).sum(0) / counts_in
    mean_out = np.where(~shadow_in, shadows, 0).sum(0) / counts_out
    std_in = float(np.std((shadows - mean_in)[shadow_in])) + 1e-6
    std_out = float(np.std((shadows - mean_out)[~shadow_in])) + 1e-6
    log_in = -0.5 * ((target - mean_in) / std_in) ** 2 - np.log(std_in)
    log_out = -0.5 * ((target - mean_out) / std_out) ** 2 - np.log(std_out)
    return log_in - log_out


@dataclass(frozen=True)
class Roc:
    """How well scores separate members from non-members."""

    auc: float
    tpr_at_1pct_fpr: float
    tpr_at_0_1pct_fpr: float


def roc(scores: np.ndarray, members: np.ndarray) -> Roc:
    """AUC and the true-positive rate at 1 % and 0.1 % false-positive rate (higher = member)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(members.astype(int), scores)
    return Roc(
        auc=float(roc_auc_score(members.astype(int), scores)),
        tpr_at_1pct_fpr=_tpr_at(fpr, tpr, 0.01),
        tpr_at_0_1pct_fpr=_tpr_at(fpr, tpr, 0.001),
    )


def roc_curve_points(scores: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) for a plot."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(members.astype(int), scores)
    return fpr, tpr


def bootstrap(
    scores: np.ndarray, members: np.ndarray, *, samples: int = 200, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95 % intervals of each Roc figure over resamples of the candidates."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(samples):
        pick = rng.integers(0, len(scores), len(scores))
        if members[pick].all() or not members[pick].any():
            continue
        rows.append(roc(scores[pick], members[pick]))
    out = {}
    for name in ("auc", "tpr_at_1pct_fpr", "tpr_at_0_1pct_fpr"):
        values = [getattr(r, name) for r in rows]
        out[name] = (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))
    return out


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The best TPR whose FPR is at most `target`."""
    ok = fpr <= target
    return float(tpr[ok].max()) if ok.any() else 0.0
