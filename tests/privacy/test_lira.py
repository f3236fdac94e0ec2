"""LiRA scoring on worlds whose answer is known: a memorising model and a random guesser."""

import numpy as np
import pytest

from fedge.pipeline.audit.run import shadow_masks
from fedge.privacy import lira


def test_logit_confidence_is_the_log_odds_of_the_true_class():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    labels = np.array([0, 2])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    py = p[[0, 1], labels]
    np.testing.assert_allclose(
        lira.logit_confidence(logits, labels), np.log(py / (1 - py)), rtol=1e-9
    )


def test_every_record_is_in_exactly_half_of_the_shadows():
    masks = shadow_masks(500, 16, seed=3)
    assert masks.shape == (16, 500) and (masks.sum(0) == 8).all()
    assert not np.array_equal(masks[0], masks[1])


def _world(gap: float, seed: int = 0):
    """phi = record difficulty + gap if the record was trained on + noise."""
    rng = np.random.default_rng(seed)
    records, shadows = 2000, 16
    difficulty = rng.normal(0, 3, records)
    inside = shadow_masks(records, shadows, seed)
    shadow_phi = difficulty + gap * inside + rng.normal(0, 0.5, (shadows, records))
    members = rng.random(records) < 0.5
    target = difficulty + gap * members + rng.normal(0, 0.5, records)
    return lira.lira_scores(target, shadow_phi, inside), target, members


def test_lira_finds_a_memorising_model_and_beats_the_loss_threshold():
    scores, target, members = _world(gap=2.0)
    attack, baseline = lira.roc(scores, members), lira.roc(target, members)
    assert attack.auc > 0.95 and attack.tpr_at_1pct_fpr > 0.5
    assert attack.tpr_at_1pct_fpr > baseline.tpr_at_1pct_fpr + 0.3  # difficulty fools the loss
    low, high = lira.bootstrap(scores, members, samples=50)["auc"]
    assert low <= attack.auc <= high


def test_lira_on_a_model_that_learned_nothing_is_at_chance():
    scores, _, members = _world(gap=0.0)
    attack = lira.roc(scores, members)
    assert attack.auc == pytest.approx(0.5, abs=0.05) and attack.tpr_at_1pct_fpr < 0.04


def test_tpr_at_a_false_positive_rate_reads_the_curve():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    members = np.array([True, False, True, True, False, False])
    result = lira.roc(scores, members)
    assert result.tpr_at_1pct_fpr == pytest.approx(1 / 3)  # only the first is above every out
    assert result.auc == pytest.approx(7 / 9)
