"""benchmarks/privacy.py's audit part and its accuracy-vs-epsilon plot.

`audit`: does `fedge audit`'s empirical lower bound on epsilon stay under the accountant's on
DP runs built to leak (a small MNIST-1D federation whose teacher, trained without noise,
memorises its records: `AUDIT_RUN`), one per epsilon of `--audit-epsilons`, and does it catch
a run whose noise was secretly cut to 1/1000 (the test-only `FEDGE_TEST_NOISE_SCALE`) while the
accountant still claims epsilon 0.2? Writes each run's claim, largest lower bound, ratio and
verdict, `audit_empirical_over_accountant_max` (the largest ratio over the calibrated runs)
and `audit_flags_miscalibration` (the cut run reported as a failure).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedge.pipeline.rundir.paths import RESULTS_FILE
from fedge.privacy.fault import ENV as FAULT
from fedge.simulations.crash import run_fedge

AUDIT_RUN = {
    "dataset": "mnist1d", "dataset-size": 1000, "clients": 2, "rounds": 1, "partition": "iid",
    "local-epochs": 20, "lr": 0.3, "batch-size": 32, "dp": "local", "student": "deep-tiny",
    "kd-epochs": 5, "quant-mode": "none", "qat": "off", "student-max-drop": 100,
    "ship-anyway": "true",
}  # fmt: skip
AUDIT_FAILED_EXIT = 5  # `fedge audit`: a lower bound above the accountant's epsilon
SHADOWS = 4


def audited(work: Path, name: str, epsilon: float, fault: str | None) -> dict[str, Any]:
    """One DP run and its audit: the accountant's claim against the empirical lower bound."""
    run, out, log = work / name, work / f"{name}-audit", work / f"{name}.log"
    env = {FAULT: fault} if fault else {}
    flags = [p for k, v in {**AUDIT_RUN, "dp-epsilon": epsilon}.items() for p in (f"--{k}", str(v))]
    run_fedge(["simulate", *flags, "--out", str(run)], log, env=env)
    audit = ["audit", str(run), "--shadows", str(SHADOWS), "--out", str(out)]
    code = run_fedge(audit, log, (0, AUDIT_FAILED_EXIT), env)
    check = json.loads((out / "audit.json").read_text())["accountant_check"]
    claimed = json.loads((run / RESULTS_FILE).read_text())["privacy"]["epsilon"]
    return {
        "dp_epsilon_asked": epsilon,
        "noise_scale": float(fault) if fault else 1.0,
        "accountant_epsilon": claimed,
        "largest_lower_bound": check["largest_lower_bound"],
        "ratio": check["largest_lower_bound"] / claimed,
        "passed": check["passed"],
        "audit_exit": code,
    }


def audits(work: Path, epsilons: list[float]) -> dict[str, Any]:
    """The calibrated runs, then the one with its noise cut; the two headline figures."""
    points = {str(eps): audited(work, f"audit-{eps}", eps, None) for eps in epsilons}
    for eps, row in points.items():
        print("audit", eps, row["accountant_epsilon"], row["largest_lower_bound"], row["passed"])
    cut = audited(work, "audit-under-calibrated", 0.2, "0.001")
    print("audit under-calibrated", cut["accountant_epsilon"], cut["largest_lower_bound"])
    return {
        "settings": {**AUDIT_RUN, "shadows": SHADOWS},
        "points": points,
        "under_calibrated": cut,
        "audit_empirical_over_accountant_max": max(p["ratio"] for p in points.values()),
        "audit_calibrated_all_passed": all(p["passed"] is True for p in points.values()),
        "audit_flags_miscalibration": cut["passed"] is False and cut["audit_exit"] == 5,
    }


def plot(scale: dict[str, Any], path: Path) -> None:
    """Teacher and student accuracy against epsilon; without DP as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = scale["points"]
    # x: the accountant's total epsilon of each run (what it spent), not the one asked for
    dp = sorted((float(v["epsilon"]), v) for k, v in points.items() if k != "none")
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for key, label, colour in (
        ("teacher_accuracy", "teacher", "C0"),
        ("student_accuracy", "student", "C1"),
    ):
        ax.plot([e for e, _ in dp], [v[key] for _, v in dp], "o-", color=colour, label=label)
        if "none" in points and points["none"][key] is not None:
            ax.axhline(points["none"][key], ls="--", color=colour, label=f"{label}, no DP")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the runs' epsilons
    ax.set_xticks([e for e, _ in dp], [f"{e:.2f}" for e, _ in dp])
    ax.set_xlabel("epsilon (delta 1e-5), total over the run's releases")
    ax.set_ylabel("test accuracy (%)")
    settings = scale["settings"]
    ax.set_title(
        f"central DP, {settings['clients']} clients, q = {settings['fraction-train']}, "
        f"{settings['dataset']}",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
