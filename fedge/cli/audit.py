"""`fedge audit`: membership inference against the teacher, each stage and the deployed student."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedge.cli.common import app, fail, say, setup_logging
from fedge.core.config import ConfigError

ACCOUNTANT_FAILED_EXIT = 5  # the audit proved more epsilon than the run's accountant claims


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="A finished `fedge simulate` run directory.")],
    shadows: Annotated[int, typer.Option(help="Shadow pipelines (>= 4; 16 recommended).")] = 16,
    workers: Annotated[int, typer.Option(help="Processes training shadows in parallel.")] = 2,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default RUN_DIR/audit/<time>).")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show debug logs.")] = False,
) -> None:
    """Membership-inference audit (online LiRA) of the teacher, each compression stage, the student.

    Also an empirical lower bound on epsilon per model; on a DP run, a bound above the
    accountant's epsilon is reported in red and exits 5.
    """
    from fedge.pipeline.audit.report import accountant_line, add_to_report
    from fedge.pipeline.audit.run import check_shadows, load_target, run_audit
    from fedge.pipeline.rundir.paths import check_new_out, staged_run_dir, timestamped_out

    try:
        run = load_target(run_dir)
        check_shadows(shadows)
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
    except ConfigError as err:
        raise fail(str(err)) from None
    target = (out or timestamped_out(run_dir, "audit")).expanduser().resolve()
    try:
        check_new_out(target)
    except ConfigError as err:
        raise fail(str(err)) from None
    setup_logging(verbose)
    with staged_run_dir(target) as work:
        result = run_audit(run, shadows, work, workers)
    add_to_report(run.run_dir, target)
    for name, row in result["models"].items():
        say(
            f"{name:10} accuracy {100 * row['accuracy']:6.2f} %  AUC {row['auc']:.3f}  "
            f"TPR@1%FPR {100 * row['tpr_at_1pct_fpr']:5.2f} %"
        )
    check = result["accountant_check"]
    colour = {None: "", True: "green", False: "bold red"}[check["passed"]]
    line = accountant_line(check).replace("**", "")
    say(line, style=colour)
    say(f"{result['seconds']:.0f} s -> {target}")
    if check["passed"] is False:
        raise typer.Exit(ACCOUNTANT_FAILED_EXIT)
