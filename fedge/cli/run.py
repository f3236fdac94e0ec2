"""Server-side commands: `fedge simulate`, `fedge compress`, `fedge audit`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from fedge.cli.common import app, console, fail, setup_logging
from fedge.core.config import ConfigError
from fedge.core.profile import ProfileError

if TYPE_CHECKING:
    from fedge.pipeline.ship.candidates import SweepGrid
    from fedge.pipeline.ship.search import SearchConfig


def _relative_size(ratio: float) -> str:
    """'57.4x smaller', or for a student bigger than its (e.g. linear) teacher '6.5x larger'."""
    return f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x larger"


SETTINGS_HELP = (
    "Every setting is also a flag: --KEY VALUE (true/false settings: --KEY / --no-KEY), or "
    '--run-config "KEY=VALUE KEY=VALUE" as with `flwr run`. `fedge settings` lists them all. '
    "Order: defaults, then --scenario, then --run-config, then flags."
)
NOT_SHIPPED_EXIT = 3  # the run finished, but the quality gate stopped the student

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
    dataset: Annotated[str | None, typer.Option(help="digits | mnist1d | npz:PATH")] = None,
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
    console.print(
        f"fedge simulate: {cfg.dataset}, {cfg.clients} clients, {cfg.partition}, "
        f"{cfg.rounds} rounds -> {cfg.out}",
        highlight=False,
    )
    try:
        run_dir = runner.simulate(cfg, verbose=verbose)
    except ConfigError as err:  # found by the server after training: the teacher is kept
        raise fail(str(err)) from None
    _summary(run_dir)


@app.command(
    context_settings=EXTRA_ARGS,
    epilog=SETTINGS_HELP.replace("Every setting", "Every compression setting"),
)
def compress(
    ctx: typer.Context,
    run_dir: Annotated[Path, typer.Argument(help="A finished `fedge simulate` run directory.")],
    scenario: Annotated[
        Path | None, typer.Option(help="TOML file of compression settings.")
    ] = None,
    run_config: Annotated[
        str | None, typer.Option(help='Compression settings as "key=value key=value".')
    ] = None,
    student: Annotated[
        str | None,
        typer.Option(help="A student family member (see fedge settings) or an arch: spec."),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None,
        typer.Option(help="Choose the smallest student within this many validation points."),
    ] = None,
    max_bytes: Annotated[
        int | None, typer.Option(help="Choose the most accurate student of at most this size.")
    ] = None,
    sweep: Annotated[
        bool,
        typer.Option(
            help="Compress a grid of students x prune ratios x quantization; write sweep.csv, "
            "sweep.json, pareto.png and ship the choice (default limit: 1 point)."
        ),
    ] = False,
    sweep_students: Annotated[
        str | None, typer.Option(help="Sweep students, comma-separated (default: all).")
    ] = None,
    sweep_prune: Annotated[
        str | None, typer.Option(help="Sweep prune ratios, comma-separated (default 0,0.3,0.5).")
    ] = None,
    sweep_quant: Annotated[
        str | None,
        typer.Option(help="Sweep quantization: fp32,qdq,qoperator,dynamic (default: all)."),
    ] = None,
    search: Annotated[
        bool,
        typer.Option(
            help="Search the student architecture and its quantization (the run's or fp32) for "
            "a device (Optuna): write search/trials.csv, trials.json, pareto.png; distil the most "
            "accurate finalists within the budgets fully and ship the best."
        ),
    ] = False,
    device_profile: Annotated[
        Path | None,
        typer.Option(help="--search: the target's `fedge profile` JSON (default: measure here)."),
    ] = None,
    max_latency_us: Annotated[
        float | None, typer.Option(help="--search: batch-1 latency budget on the target (µs).")
    ] = None,
    trials: Annotated[int, typer.Option(help="--search: architectures to try.")] = 30,
    time_budget: Annotated[
        float, typer.Option(help="--search: seconds the trials may take in all.")
    ] = 480.0,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default RUN_DIR/compress/<time>).")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show debug logs.")] = False,
) -> None:
    """Re-run compression on a finished run's teacher (no retraining): new signed bundle + report."""
    from fedge.pipeline.rundir.paths import staged_run_dir, timestamped_out
    from fedge.pipeline.ship.candidates import Choice
    from fedge.pipeline.ship.gate import NotShippedError
    from fedge.pipeline.ship.recompress import compress_config, compress_run
    from fedge.simulations.runner import requested_settings

    try:
        changes = requested_settings(scenario, run_config, ctx.args, {"student": student})
        if search:  # trials and the final student distil on the public pool
            if changes.get("kd-source", "public") in ("federated", "both"):
                raise ConfigError(
                    f"--search distils on the public pool; kd-source {changes['kd-source']!r} "
                    "needs the run's clients: allowed with --search: public, auto"
                )
            changes["kd-source"] = "public"
        cfg, teacher_params = compress_config(run_dir, changes)
        finder = _search(search, device_profile, max_latency_us, max_bytes, trials, time_budget)
        if finder is not None:
            max_bytes = None  # a budget of the search, not a choice among family students
            if sweep or student or max_accuracy_drop is not None:
                raise ConfigError(
                    "--search chooses the student: not with --sweep, --student or "
                    "--max-accuracy-drop"
                )
        choice = Choice(max_accuracy_drop=max_accuracy_drop, max_bytes=max_bytes)
        grid = _grid(sweep_students, sweep_prune, sweep_quant) if sweep else None
        if not sweep and (sweep_students or sweep_prune or sweep_quant):
            raise ConfigError("--sweep-students/--sweep-prune/--sweep-quant need --sweep")
    except (ConfigError, ProfileError) as err:
        raise fail(str(err)) from None
    target = (out or timestamped_out(run_dir, "compress")).expanduser().resolve()
    if target.exists() and any(target.iterdir()):
        raise fail(f"out {target} already exists and is not empty; choose a new --out")
    setup_logging(verbose)
    new_parent = not target.parent.exists()  # RUN/compress/ on the first compress of a run
    try:
        with staged_run_dir(target) as work:
            results = compress_run(run_dir, cfg, work, teacher_params, choice, grid, finder)
    except (ConfigError, NotShippedError) as err:  # nothing was written: leave nothing behind
        if new_parent and target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()
        if isinstance(err, NotShippedError):
            raise fail(
                f"quality gate: {err}; nothing written. Ship it anyway: --ship-anyway",
                code=NOT_SHIPPED_EXIT,
            ) from None
        raise fail(str(err)) from None  # e.g. no student meets the limit
    student_row = results["student"]
    console.print(
        f"student {100 * student_row['accuracy']:.2f} % ({student_row['onnx_bytes']:,} bytes, "
        f"{_relative_size(student_row['size_ratio'])} than the teacher at "
        f"{100 * results['teacher']['accuracy']:.2f} %) -> {target}",
        highlight=False,
    )


def _search(
    search: bool,
    profile: Path | None,
    max_latency_us: float | None,
    max_bytes: int | None,
    trials: int,
    time_budget: float,
) -> SearchConfig | None:
    """The search `fedge compress` asks for (ConfigError/ProfileError on a bad option)."""
    from fedge.pipeline.ship.search import SearchConfig

    if not search:
        if profile is not None or max_latency_us is not None:
            raise ConfigError("--device-profile and --max-latency-us need --search")
        return None
    model = None
    if profile is not None:
        from fedge.compression.latency import fit
        from fedge.core.profile import load_profile

        model = fit(load_profile(profile))
    return SearchConfig(
        trials=trials,
        time_budget_s=time_budget,
        max_latency_us=max_latency_us,
        max_bytes=max_bytes,
        model=model,
    )


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


def _grid(students: str | None, prune: str | None, quant: str | None) -> SweepGrid:
    """The sweep grid from comma-separated flag values (defaults where a flag is not given)."""
    from fedge.pipeline.ship.candidates import SweepGrid

    def items(text: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in text.split(",") if part.strip())

    changes: dict[str, Any] = {}
    if students is not None:
        changes["students"] = items(students)
    if quant is not None:
        changes["quant"] = items(quant)
    if prune is not None:
        try:
            changes["prune_ratios"] = tuple(float(part) for part in items(prune))
        except ValueError:
            raise ConfigError(
                f"--sweep-prune takes comma-separated numbers in [0, 1), got {prune!r}"
            ) from None
    return SweepGrid(**changes)


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
    """Membership-inference audit (online LiRA) of the teacher, each compression stage, the student."""
    from fedge.pipeline.audit.report import add_to_report
    from fedge.pipeline.audit.run import check_shadows, load_target, run_audit
    from fedge.pipeline.rundir.paths import staged_run_dir, timestamped_out

    try:
        run = load_target(run_dir)
        check_shadows(shadows)
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
    except ConfigError as err:
        raise fail(str(err)) from None
    target = (out or timestamped_out(run_dir, "audit")).expanduser().resolve()
    if target.exists() and any(target.iterdir()):
        raise fail(f"out {target} already exists and is not empty; choose a new --out")
    setup_logging(verbose)
    with staged_run_dir(target) as work:
        result = run_audit(run, shadows, work, workers)
    add_to_report(run.run_dir, target)
    for name, row in result["models"].items():
        console.print(
            f"{name:10} accuracy {100 * row['accuracy']:6.2f} %  AUC {row['auc']:.3f}  "
            f"TPR@1%FPR {100 * row['tpr_at_1pct_fpr']:5.2f} %",
            highlight=False,
        )
    console.print(f"{result['seconds']:.0f} s -> {target}", highlight=False)


def _summary(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    table = Table(title=f"fedge run {results['run_id']}")
    for column in ("model", "accuracy", "params", "bytes"):
        table.add_column(column, justify="right" if column != "model" else "left")
    teacher, student = results["teacher"], results["student"]
    table.add_row(
        "teacher (fp32 ONNX)",
        f"{100 * teacher['accuracy']:.2f} %",
        f"{teacher['params']:,}",
        f"{teacher['onnx_bytes']:,}",
    )
    if student is None:
        Console().print(table)
        raise fail(
            f"NOT SHIPPED: quality gate: {results['quality_gate']['reason']}. No client got a "
            f"model. Ship it anyway: fedge compress {run_dir} --ship-anyway",
            code=NOT_SHIPPED_EXIT,
        )
    for tier in results.get("tiers") or []:  # device tiers: a student each
        table.add_row(
            f"student, tier {tier['tier']} (<= {tier['budget_us']:g} µs)",
            f"{100 * tier['test_accuracy']:.2f} %",
            "",
            f"{tier['bytes']:,}",
        )
    if not results.get("tiers"):
        table.add_row(
            "deployed student",
            f"{100 * student['accuracy']:.2f} %",
            f"{student['params']:,}",
            f"{student['onnx_bytes']:,}",
        )
    Console().print(table)
    installed = sum(c["installed"] for c in results["clients"])
    console.print(
        f"{_relative_size(student['size_ratio'])}, {installed}/{len(results['clients'])} "
        "clients installed it, "
        f"{results['timing_s']['total']:.0f} s. Report: {run_dir / 'report.md'}",
        highlight=False,
    )
