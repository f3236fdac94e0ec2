"""Server-side commands: `fedge simulate` and `fedge settings`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedge.cli.common import app, fail, say, setup_logging
from fedge.core.budgets import Budget
from fedge.core.config import ConfigError

if TYPE_CHECKING:
    pass


def relative_size(ratio: float) -> str:
    """'57.4x smaller', or for a student bigger than its (e.g. linear) teacher '6.5x larger'."""
    return f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x larger"


SETTINGS_HELP = (
    "Every setting is also a flag: --KEY VALUE (true/false settings: --KEY / --no-KEY), or "
    '--run-config "KEY=VALUE KEY=VALUE" as with `flwr run`. `fedge settings` lists them all. '
    "Order: defaults, then --scenario, then --run-config, then flags."
)
NOT_SHIPPED_EXIT = 3  # the run finished, but the quality gate stopped the student
DEPLOY_FAILED_EXIT = 4  # the run finished, but fewer clients than min-installed installed it

EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=EXTRA_ARGS, epilog=SETTINGS_HELP)
def simulate(
    ctx: typer.Context,
    scenario: Annotated[
        Path | None, typer.Option(help="TOML file of settings (see simulations/).")
    ] = None,
    run_config: Annotated[
        str | None, typer.Option(help='Settings as "key=value key=value" (flwr run syntax).')
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="digits | mnist1d | fmnist | npz:PATH")
    ] = None,
    clients: Annotated[int | None, typer.Option(help="Number of simulated clients.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, init and sampling.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (must not exist or be empty; default ~/fedge-runs/...)."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the unfinished run in this directory from its checkpoint."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Train a teacher federatedly, compress it, sign it and redistribute it to every client."""
    from fedge.simulations import runner
    from fedge.simulations.interrupt import stop_on_signals
    from fedge.simulations.runner import build_config, preflight, requested_settings

    headline = {"dataset": dataset, "clients": clients, "rounds": rounds, "seed": seed}
    if out is not None:
        headline["out"] = str(out)
    try:
        settings = requested_settings(scenario, run_config, ctx.args, headline)
        cfg = build_config(settings, resume=resume)
        preflight(cfg)
    except ConfigError as err:
        raise fail(str(err)) from None
    setup_logging(verbose)
    say(
        f"fedge simulate: {cfg.dataset}, {cfg.clients} clients, {cfg.partition}, "
        f"{cfg.rounds} rounds -> {cfg.out}"
    )
    try:
        with stop_on_signals(Path(cfg.out)):  # Ctrl-C: exit within seconds, resumable
            run_dir = runner.simulate(cfg, verbose=verbose)
    except ConfigError as err:  # found by the server after training: the teacher is kept
        raise fail(str(err)) from None
    except runner.RunFailedError as err:  # not a setting: the nodes (lost, or every reply refused)
        raise fail(f"the federation could not go on: {err}", code=1) from None
    _summary(run_dir)


@app.command("settings")
def list_settings(
    compress_only: Annotated[
        bool, typer.Option("--compress", help="Only what `fedge compress` may change.")
    ] = False,
) -> None:
    """List every run setting: key, default, allowed values, what it does."""
    from fedge.core.config import SETTINGS

    table = Table(title="fedge settings (pyproject keys, --KEY flags, --run-config keys)")
    for column in ("setting", "default", "allowed", "compress", "what"):
        table.add_column(column)
    for key, spec in SETTINGS.items():
        if compress_only and not spec.compress:
            continue
        default = json.dumps(spec.default)
        table.add_row(key, default, spec.allowed(), "yes" if spec.compress else "", spec.help)
    out = Console()
    out.width = max(out.width, 160)  # keys stay whole in pipes and narrow terminals
    out.print(table)


def _summary(run_dir: Path) -> None:
    """The run's teacher and student(s) as a table; exit 3 when nothing shipped."""
    from fedge.pipeline.outputs.report import not_shipped_reason
    from fedge.pipeline.outputs.results import RunResults

    results = RunResults.from_json(json.loads((run_dir / "results.json").read_text()))
    record = results.compression
    teacher, student = record.teacher, record.student
    table = Table(title=Text(f"fedge run {results.run_id}"))  # the --out name: text, not markup
    for column in ("model", "accuracy", "params", "bytes"):
        table.add_column(column, justify="right" if column != "model" else "left")
    params = f"{teacher.params:,}" if teacher.params is not None else ""
    table.add_row("teacher (fp32 ONNX)", _pct(teacher.accuracy), params, f"{teacher.onnx_bytes:,}")
    if student is None:
        Console().print(table)
        raise fail(
            f"NOT SHIPPED: quality gate: {not_shipped_reason(record)}. No client got a "
            f"model. Ship it anyway: fedge compress {run_dir} --ship-anyway",
            code=NOT_SHIPPED_EXIT,
        )
    for tier in results.tiers or ():  # device tiers: a student each
        name = f"student, tier {tier.tier} ({Budget.from_json(tier.budget).describe()})"
        table.add_row(name, _pct(tier.test_accuracy), "", f"{tier.bytes:,}")
    if not results.tiers:
        size = f"{student.onnx_bytes:,}"
        table.add_row("deployed student", _pct(student.accuracy), f"{student.params:,}", size)
    Console().print(table)
    installed = sum(c.installed for c in results.clients)
    say(
        f"{relative_size(student.size_ratio)}, {installed}/{len(results.clients)} "
        "clients installed it, "
        f"{results.timing_s['total']:.0f} s. Report: {run_dir / 'report.md'}"
    )
    if results.deployment is not None and not results.deployment.passed:
        reasons = sorted({c.reason for c in results.clients if not c.installed})[:3]
        raise fail(
            f"deployment: {results.deployment.reason} (why: {'; '.join(reasons)}). "
            f"Each client's verdict: {run_dir / 'report.md'}",
            code=DEPLOY_FAILED_EXIT,
        )


def _pct(value: float) -> str:
    return f"{100 * value:.2f} %"
