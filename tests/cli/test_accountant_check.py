"""The audit checks the accountant: the largest empirical epsilon bound against the claimed one."""

import math
import shutil

import pytest

from fedge.pipeline.audit import run as audit_run
from fedge.pipeline.audit.report import accountant_line, render_audit
from tests.cli.conftest import one_line


def _models(bounds: dict[str, float]) -> dict:
    row = {"auc": 0.6, "tpr_at_1pct_fpr": 0.02, "tpr_at_0_1pct_fpr": 0.0, "accuracy": 0.9}
    row |= {"ci95": {"tpr_at_1pct_fpr": (0.01, 0.03)}, "loss_threshold": {"auc": 0.55}}
    return {
        name: {**row, "epsilon_lower_bound": {"epsilon_lower": b, "confidence": 0.95}}
        for name, b in bounds.items()
    }


def test_the_largest_bound_is_held_against_the_accountants_epsilon():
    models = _models({"teacher": 0.4, "student": 1.3})
    failed = audit_run.accountant_check(models, {"mode": "local", "epsilon": 1.0, "delta": 1e-5})
    assert failed["passed"] is False and failed["model"] == "student"
    assert failed["largest_lower_bound"] == 1.3 and failed["delta"] == 1e-5
    local = {"mode": "local", "epsilon": 2.0, "delta": 1e-5}
    assert audit_run.accountant_check(models, local)["passed"] is True
    none = audit_run.accountant_check(models, {"mode": "none", "epsilon": None, "delta": None})
    assert none["passed"] is None and none["delta"] == 1e-5
    # central DP is client-level: one record may move its client's data, so 2 x epsilon
    central = audit_run.accountant_check(models, {"mode": "central", "epsilon": 0.7, "delta": 1e-5})
    assert central["passed"] is True and central["epsilon"] == 1.4
    assert central["delta"] == pytest.approx((1 + math.exp(0.7)) * 1e-5)
    assert "(client-level 0.70, doubled" in accountant_line(central)
    # a central guarantee whose record-level delta reaches 1 says nothing: no overflow, no claim
    vacuous = audit_run.accountant_check(
        models, {"mode": "central", "epsilon": 2312.0, "delta": 1e-5}
    )
    assert vacuous["passed"] is None and vacuous["vacuous"] and vacuous["epsilon"] is None
    assert accountant_line(vacuous).startswith("No claim to check: central DP's epsilon 2.31e+03")
    audit = {
        "attack": "online LiRA",
        "shadows": 4,
        "candidates": {"members": 10, "non_members": 10},
        "models": models,
        "accountant_check": failed,
    }
    text = render_audit(audit)
    assert "| teacher | 90.00 % | 0.600 | 2.00 % (1.00 to 3.00) | 0.00 % | 0.550 | 0.40 |" in text
    assert "**FAILED accountant check**" in text and "(student, 95 % confidence" in text
    assert "above the accountant's 1.00 for one record" in text
    passed = audit_run.accountant_check(models, local)
    assert accountant_line(passed).startswith("Accountant check passed")


@pytest.mark.parametrize(("claimed", "code"), [(1.0, 5), (2.0, 0)])
def test_a_failed_check_exits_5_and_says_so(
    cli, tmp_path, finished_run, monkeypatch, claimed, code
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    models = _models({"teacher": 1.3, "student": 0.2})

    def fake_audit(target, shadows, out, workers=2):  # the scoring is tested on its own
        audit = {
            "attack": "online LiRA",
            "shadows": shadows,
            "candidates": {"members": 10, "non_members": 10},
            "models": models,
            "seconds": 1.0,
            "accountant_check": audit_run.accountant_check(
                models, {"mode": "local", "epsilon": claimed, "delta": 1e-5}
            ),
        }
        (out / "audit.md").write_text(render_audit(audit))
        return audit

    monkeypatch.setattr(audit_run, "run_audit", fake_audit)
    result = cli("audit", run, "--out", tmp_path / "audit")
    assert result.exit_code == code, result.output
    expected = "FAILED accountant check" if code else "Accountant check passed"
    assert expected in one_line(result.output)
    assert expected in (run / "report.md").read_text()  # the report says it too


def test_a_shadow_whose_federated_rounds_were_discarded_offers_its_pruned_model():
    phi = {"teacher": 1, "distilled": 2, "pruned": 3, "student": 5}
    assert audit_run.stage_phi(phi, "federated") == 3 and audit_run.stage_phi(phi, "student") == 5
    with pytest.raises(KeyError):
        audit_run.stage_phi({"student": 5}, "pruned")
