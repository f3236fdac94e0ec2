"""The audit's outputs for people: audit.md, the run report's audit section, the ROC plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedge.core.io import atomic_write_bytes
from fedge.pipeline.rundir.paths import REPORT_FILE

AUDIT_HEADING = "## Membership-inference audit"


def render_audit(audit: dict[str, Any]) -> str:
    """audit.md: one row per model, then how the student compares with the teacher."""
    lines = [
        AUDIT_HEADING,
        "",
        f"{audit['attack']}, {audit['shadows']} shadow pipelines; {audit['candidates']['members']} "
        f"member and {audit['candidates']['non_members']} non-member records. Chance: TPR = FPR.",
        "",
        "| model | test accuracy | AUC | TPR @ 1 % FPR (95 % CI) | TPR @ 0.1 % FPR | "
        "loss-threshold AUC | epsilon >= (95 %) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in audit["models"].items():
        low, high = m["ci95"]["tpr_at_1pct_fpr"]
        bound = m.get("epsilon_lower_bound", {}).get("epsilon_lower")
        lines.append(
            f"| {name} | {100 * m['accuracy']:.2f} % | {m['auc']:.3f} | "
            f"{100 * m['tpr_at_1pct_fpr']:.2f} % ({100 * low:.2f} to {100 * high:.2f}) | "
            f"{100 * m['tpr_at_0_1pct_fpr']:.2f} % | {m['loss_threshold']['auc']:.3f} | "
            f"{'-' if bound is None else f'{bound:.2f}'} |"
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
    if "replayed_student_sha256" in audit:
        same = audit["replayed_student_sha256"] == audit["shipped_student_sha256"]
        lines += [
            "",
            "The distilled and pruned rows come from replaying the run's compression on its "
            "teacher; the student row is the shipped bundle. "
            + (
                "The replay rebuilt the shipped student byte for byte, so the stages are the "
                "run's own."
                if same
                else "The replay's student differs from the shipped one (the compression was "
                "not reproducible here), so the stage rows may differ from the run's report."
            ),
        ]
    privacy = audit.get("privacy") or {}
    if privacy.get("epsilon") is not None:
        lines += [
            "",
            f"Trained with DP ({privacy['mode']}): epsilon {privacy['epsilon']:.2f} at delta "
            f"{privacy['delta']:g}.",
        ]
    if "accountant_check" in audit:
        lines += ["", accountant_line(audit["accountant_check"])]
    return "\n".join(lines) + "\n"


def accountant_line(check: dict[str, Any]) -> str:
    """The accountant check in one sentence; a failure starts with FAILED in bold."""
    bound = (
        f"the largest empirical lower bound on epsilon ({check['model']}, "
        f"{100 * check['confidence']:.0f} % confidence over all models, delta "
        f"{check['delta']:.3g}: Clopper-Pearson limits of the attack's error rates on held-out "
        f"candidates, taken as independent trials) is {check['largest_lower_bound']:.2f}"
    )
    if check.get("vacuous"):
        return (
            f"No claim to check: central DP's epsilon {check['accountant_epsilon']:.3g} says "
            f"nothing about one record (doubled, its delta reaches 1); {bound}."
        )
    if check["passed"] is None:
        return f"No DP claim to check: {bound}."
    claim = f"the accountant's {check['epsilon']:.2f} for one record"
    given = check.get("accountant_epsilon")
    if given is not None and abs(given - check["epsilon"]) > 1e-12:
        claim += f" (client-level {given:.2f}, doubled: a record changes its client's data)"
    if check["passed"]:
        return f"Accountant check passed: {bound}, at most {claim}."
    return (
        f"**FAILED accountant check**: {bound}, above {claim}; the noise calibration or the "
        "accounting is wrong."
    )


def add_to_report(run_dir: Path, audit_dir: Path) -> None:
    """Put the audit's section into the run's report.md, replacing an earlier audit's."""
    report = run_dir / REPORT_FILE
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
