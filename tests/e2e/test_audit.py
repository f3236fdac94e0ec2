"""End to end: `fedge audit` scores every model of a finished tiny run with online LiRA."""

import json

import pytest

from fedge.client.node import SIMULATION_ENV
from fedge.privacy.fault import ENV as FAULT
from fedge.simulations.runner import build_config, preflight, requested_settings, simulate
from tests.e2e.processes import fedge, one_line
from tests.flower_local import in_process_engine


def test_audit_scores_every_model_and_refuses_bad_input(tmp_path, tiny_run):
    out = tmp_path / "a"
    proc = fedge("audit", str(tiny_run), "--shadows", "4", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    audit = json.loads((out / "audit.json").read_text())
    source = json.loads((tiny_run / "results.json").read_text())
    kept = source["student_rounds"]["kept"]  # rounds that lowered validation were discarded
    expected = {"teacher", "distilled", "pruned", "student"} | ({"federated"} if kept else set())
    assert set(audit["models"]) == expected
    # The audit's replay of the run's compression rebuilt the shipped student byte for byte.
    assert audit["replayed_student_sha256"] == audit["shipped_student_sha256"]
    for row in audit["models"].values():
        assert 0 <= row["tpr_at_1pct_fpr"] <= 1 and 0 <= row["auc"] <= 1
        assert row["ci95"]["auc"][0] <= row["auc"] <= row["ci95"]["auc"][1]
        bound = row["epsilon_lower_bound"]  # counted on the held-out half of the candidates
        assert bound["epsilon_lower"] >= 0
        assert bound["confidence"] == pytest.approx(1 - 0.05 / len(audit["models"]))  # Bonferroni
        assert bound["members"] + bound["non_members"] <= sum(audit["candidates"].values())
    check = audit["accountant_check"]  # no DP: nothing claimed, the bound is still reported
    assert check["passed"] is None and check["epsilon"] is None and check["delta"] == 1e-5
    assert check["confidence"] == 0.95
    assert audit["models"]["student"]["accuracy"] == pytest.approx(source["student"]["accuracy"])
    assert audit["shadows"] == 4 and (out / "roc.png").read_bytes().startswith(b"\x89PNG")
    report = (tiny_run / "report.md").read_text()
    assert report.count("## Membership-inference audit") == 1 and "x the teacher's" in report
    assert "No DP claim to check: the largest empirical lower bound on epsilon" in report
    # One refusal through the real process; every case runs in-process in tests/cli/.
    proc = fedge(
        "audit", str(tiny_run), "--shadows", "3", "--out", str(tmp_path / "bad"), cwd=tmp_path
    )
    assert proc.returncode == 2 and "--shadows must be >= 4" in one_line(proc.stderr), proc.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()


# Local DP at a claimed epsilon of 0.2 on a small MNIST-1D federation whose teacher, trained
# without noise, memorises its records (train far above test accuracy).
DP_RUN = (
    "--dataset", "mnist1d", "--dataset-size", "1000", "--clients", "2", "--rounds", "1",
    "--partition", "iid", "--local-epochs", "20", "--lr", "0.3", "--batch-size", "32",
    "--dp", "local", "--dp-epsilon", "0.2", "--student", "deep-tiny", "--kd-epochs", "5",
    "--quant-mode", "none", "--qat", "off", "--student-max-drop", "100", "--ship-anyway", "true",
)  # fmt: skip


@pytest.mark.parametrize("under_calibrated", [True, False])
def test_the_audit_catches_noise_below_what_the_accountant_was_told(
    tmp_path, under_calibrated, monkeypatch
):
    # The test-only fault applies 1/1000 of the calibrated noise while the accountant, the
    # ledger and results.json still claim epsilon 0.2: the audit's empirical lower bound must
    # exceed it, say so in red and exit 5. The same run with the real noise passes.
    env = {FAULT: "0.001"} if under_calibrated else {}
    run, out = tmp_path / "run", tmp_path / "audit"
    if under_calibrated:
        _dp_run(run, env, monkeypatch)
    else:  # local DP-SGD in Ray's workers, through the real `fedge simulate`
        proc = fedge("simulate", *DP_RUN, "--out", str(run), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    claimed = json.loads((run / "results.json").read_text())["privacy"]
    assert claimed["mode"] == "local" and claimed["epsilon"] <= 0.2  # the same claim either way
    proc = fedge("audit", str(run), "--shadows", "4", "--out", str(out), cwd=tmp_path, env=env)
    check = json.loads((out / "audit.json").read_text())["accountant_check"]
    assert check["epsilon"] == pytest.approx(claimed["epsilon"])
    text = (out / "audit.md").read_text()
    if under_calibrated:
        assert proc.returncode == 5, proc.stderr[-3000:]
        assert check["passed"] is False and check["largest_lower_bound"] > 2 * check["epsilon"]
        assert "**FAILED accountant check**" in text
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert check["passed"] is True and check["largest_lower_bound"] <= check["epsilon"]
        assert "Accountant check passed" in text


def _dp_run(out, env: dict[str, str], monkeypatch) -> None:
    """DP_RUN as `fedge simulate` runs it, but its nodes in this process (no Ray start).

    Under test is the audit, a real `fedge audit` process. How the run's two clients were
    reached does not change what they train: DP-SGD's Poisson sampling and noise draw from
    generators seeded per client (fedge.privacy.dp_sgd), not from a process's global RNG. The
    calibrated case goes through `fedge simulate` on Ray.
    """
    for key, value in {**env, SIMULATION_ENV: "1"}.items():
        monkeypatch.setenv(key, value)
    cfg = build_config(requested_settings(None, None, list(DP_RUN), {"out": str(out)}))
    preflight(cfg)
    simulate(cfg, engine=in_process_engine(cfg.clients))
