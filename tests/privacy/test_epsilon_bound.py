"""The empirical epsilon lower bound: valid (never above the true epsilon beyond its confidence)
and tight enough to catch an accountant that is off (mechanisms of known epsilon)."""

import math

import numpy as np
import pytest

from fedge.privacy.epsilon_bound import epsilon_lower_bound, proved_epsilon, upper_limit


def randomized_response(epsilon: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of an epsilon-DP mechanism (pure DP): one bit, right with e^eps / (1 + e^eps)."""
    rng = np.random.default_rng(seed)
    members = np.arange(2 * n) < n
    right = rng.random(2 * n) < math.exp(epsilon) / (1 + math.exp(epsilon))
    return np.where(right, members, ~members).astype(float), members


def test_the_bound_stays_below_a_mechanisms_true_epsilon_and_comes_close():
    bounds = [
        epsilon_lower_bound(*randomized_response(1.0, 20000, s), 0.0).epsilon_lower
        for s in range(40)
    ]
    assert sum(b > 1.0 for b in bounds) <= 2  # 95 % confidence: ~2 of 40 may exceed; CP rarely does
    assert 0.85 < float(np.mean(bounds)) <= 1.0  # and it is informative at this size


def test_a_bound_above_what_the_accountant_claims_is_what_catches_a_wrong_accountant():
    """Noise calibrated for epsilon 3 but reported as 1: the bound exceeds the claim."""
    bound = epsilon_lower_bound(*randomized_response(3.0, 20000, seed=1), delta=1e-5)
    assert bound.epsilon_lower > 1.0 * 2.5
    assert bound.tpr > 0.9 and bound.fpr < 0.1 and bound.members + bound.non_members == 20000


def test_scores_that_carry_no_membership_prove_nothing():
    rng = np.random.default_rng(0)
    members = rng.random(4000) < 0.5
    bounds = [epsilon_lower_bound(rng.normal(size=4000), members, 1e-5, seed=s) for s in range(10)]
    assert max(b.epsilon_lower for b in bounds) < 0.3


def test_perfect_separation_is_limited_by_the_number_of_records():
    members = np.arange(2000) < 1000
    bound = epsilon_lower_bound(members.astype(float), members, 1e-5)
    # no error in ~500 of each: the FPR limit is ~0.0073 at 97.5 %, ln(0.99 / 0.0073) ~ 4.9
    assert 4.5 < bound.epsilon_lower < 5.5 and bound.tpr == 1.0 and bound.fpr == 0.0


def test_the_pieces():
    assert upper_limit(0, 100, 0.025) == pytest.approx(1 - 0.025 ** (1 / 100))
    assert upper_limit(5, 5, 0.025) == 1.0
    assert proved_epsilon(0.5, 0.5, 0.0) == 0.0  # chance proves nothing
    assert proved_epsilon(0.01, 0.5, 0.0) == pytest.approx(math.log(0.5 / 0.01))
    for scores, members, delta in (
        (np.zeros(4), np.array([1, 1, 1, 1]), 0.0),  # no non-members
        (np.zeros(4), np.array([1, 0, 1, 0]), 1.5),
        (np.zeros((2, 2)), np.ones((2, 2)), 0.0),
    ):
        with pytest.raises(ValueError):
            epsilon_lower_bound(scores, members, delta)
