"""An empirical lower bound on epsilon from a membership attack's scores (checks the accountant).

(epsilon, delta)-DP bounds every membership test: its false-positive and false-negative rates
satisfy FPR + e^eps FNR >= 1 - delta and FNR + e^eps FPR >= 1 - delta (Kairouz et al. 2015),
so a test with rates (FPR, FNR) proves

    eps >= max(ln((1 - delta - FPR) / FNR), ln((1 - delta - FNR) / FPR)).

Measured rates are estimates; as in Jagielski et al. 2020 and Nasr et al. 2021 the bound uses
Clopper-Pearson upper limits of both rates. The threshold is chosen on one half of the
candidates (the one whose rates prove the most there) and the rates are counted on the other
half, so choosing it costs no confidence. Caveat: Clopper-Pearson takes the candidates as
independent trials, while here they all come from one training run with a fixed split (the
papers train a model per trial; a one-run audit is rigorous only with each record included at
random, Steinke, Nasr and Jagielski 2023), so the confidence is nominal. A bound above the
run's record-level epsilon points at the noise calibration or the accounting.

Pure numpy/scipy: no torch, no run directory.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

CONFIDENCE = 0.95
NO_DP_DELTA = 1e-5  # the delta of a bound when the run claims no guarantee
MAX_THRESHOLDS = 512  # distinct scores tried on the choosing half (quantiles beyond that)


@dataclass(frozen=True)
class EpsilonBound:
    """The lower bound and the test that gave it (counted on the held-out half)."""

    epsilon_lower: float  # 0.0 when no test proves anything
    confidence: float
    threshold: float  # score at or above which a record is called a member
    fpr: float  # measured on the held-out half
    tpr: float
    members: int  # held-out records the rates are counted on
    non_members: int

    def to_json(self) -> dict[str, Any]:
        """audit.json's "epsilon_lower_bound" object."""
        return asdict(self)


def record_level(privacy: dict[str, Any] | None) -> tuple[float | None, float]:
    """The (epsilon, delta) a run's guarantee gives one training record: what an attack tests.

    local (DP-SGD, add/remove one record): as stated. central (add/remove one client): a record
    changes its client's data, which is removing that client and adding another, so group
    privacy for 2 gives 2 eps and (1 + e^eps) delta. none, or a central guarantee whose
    record-level delta reaches 1 (it then says nothing): no epsilon, delta 1e-5.
    """
    privacy = privacy or {}
    epsilon, delta = privacy.get("epsilon"), privacy.get("delta")
    if epsilon is None or delta is None:
        return None, NO_DP_DELTA
    if privacy.get("mode") == "central":
        grouped = math.inf if epsilon > 700 else (1 + math.exp(epsilon)) * delta
        return (None, NO_DP_DELTA) if grouped >= 1 else (2 * epsilon, grouped)
    return epsilon, delta


def upper_limit(errors: int, trials: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper limit of a rate at confidence 1 - alpha."""
    if trials <= 0:
        raise ValueError(f"a rate needs at least one trial, got {trials}")
    if errors >= trials:
        return 1.0
    return float(beta.ppf(1 - alpha, errors + 1, trials - errors))


def _limits(errors: np.ndarray, trials: int, alpha: float) -> np.ndarray:
    """upper_limit for many error counts out of the same number of trials."""
    safe = np.minimum(errors, trials - 1)
    return np.where(errors >= trials, 1.0, beta.ppf(1 - alpha, safe + 1, trials - safe))


def proved_epsilon(fpr: float, fnr: float, delta: float) -> float:
    """The epsilon a test with these (upper-limit) error rates proves; 0 when it proves none."""
    bounds = [0.0]
    for a, b in ((fpr, fnr), (fnr, fpr)):
        if b > 0 and 1 - delta - a > b:
            bounds.append(math.log((1 - delta - a) / b))
    return max(bounds)


def epsilon_lower_bound(
    scores: np.ndarray,
    members: np.ndarray,
    delta: float,
    *,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> EpsilonBound:
    """The epsilon that (scores, members) prove at `confidence` (higher score = member).

    Parameters
    ----------
    scores
        One attack score per candidate record.
    members
        Whether each candidate was in the training data.
    delta
        The delta of the guarantee being checked (0 for pure DP).
    confidence
        Both error rates' upper limits hold together with this probability (each at half the
        remaining risk).
    seed
        Which candidates choose the threshold and which count the rates.

    """
    scores, members = np.asarray(scores, dtype=np.float64), np.asarray(members, dtype=bool)
    if scores.shape != members.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and members {members.shape} must be one vector")
    if not 0 <= delta < 1 or not 0 < confidence < 1:
        raise ValueError(f"need 0 <= delta < 1 and 0 < confidence < 1, got {delta}, {confidence}")
    order = np.random.default_rng(seed).permutation(len(scores))
    choose, count = order[: len(order) // 2], order[len(order) // 2 :]
    for half in (choose, count):
        if members[half].all() or not members[half].any():
            raise ValueError("each half of the candidates needs members and non-members")
    alpha = (1 - confidence) / 2  # FPR and FNR limits hold together (union bound)
    candidates = np.unique(scores[choose])
    if len(candidates) > MAX_THRESHOLDS:
        candidates = np.unique(np.quantile(candidates, np.linspace(0, 1, MAX_THRESHOLDS)))
    chosen = _proved(scores[choose], members[choose], candidates, delta, alpha)
    best = float(candidates[int(np.argmax(chosen[0]))])
    eps, fpr, tpr = (
        float(v[0]) for v in _proved(scores[count], members[count], np.array([best]), delta, alpha)
    )
    inside, outside = int(members[count].sum()), int((~members[count]).sum())
    return EpsilonBound(eps, confidence, best, fpr, tpr, inside, outside)


def _proved(
    scores: np.ndarray, members: np.ndarray, thresholds: np.ndarray, delta: float, alpha: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per threshold: the epsilon its upper-limit rates prove, the measured FPR and TPR."""
    inside, outside = np.sort(scores[members]), np.sort(scores[~members])
    false_neg = np.searchsorted(inside, thresholds, side="left")  # members scored below
    false_pos = len(outside) - np.searchsorted(outside, thresholds, side="left")
    fpr_hi, fnr_hi = _limits(false_pos, len(outside), alpha), _limits(false_neg, len(inside), alpha)
    eps = np.array([proved_epsilon(a, b, delta) for a, b in zip(fpr_hi, fnr_hi, strict=True)])
    return eps, false_pos / len(outside), 1 - false_neg / len(inside)
