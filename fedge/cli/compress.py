"""`fedge compress`: a new compression of a finished run's teacher (choice, sweep or search)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedge.cli.common import app, fail, say, setup_logging
from fedge.cli.run import EXTRA_ARGS, NOT_SHIPPED_EXIT, SETTINGS_HELP, relative_size
from fedge.core.config import ConfigError
from fedge.core.profile import ProfileError

if TYPE_CHECKING:
    from fedge.pipeline.ship.candidates import SweepGrid
    from fedge.pipeline.ship.recompress import CompressRequest
    from fedge.pipeline.ship.search import SearchConfig

RunDir = Annotated[Path, typer.Argument(help="A finished `fedge simulate` run directory.")]
Scenario = Annotated[Path | None, typer.Option(help="TOML file of compression settings.")]
Pairs = Annotated[str | None, typer.Option(help='Compression settings as "key=value key=value".')]
Student = Annotated[
    str | None, typer.Option(help="A student family member (see fedge settings) or an arch: spec.")
]
MaxDrop = Annotated[
    float | None,
    typer.Option(help="Choose the smallest student within this many validation points."),
]
MaxBytes = Annotated[
    int | None, typer.Option(help="Choose the most accurate student of at most this size.")
]
Sweep = Annotated[
    bool,
    typer.Option(
        help="Compress a grid of students x prune ratios x quantization; write sweep.csv, "
        "sweep.json, pareto.png and ship the choice (default limit: 1 point)."
    ),
]
SweepStudents = Annotated[
    str | None, typer.Option(help="Sweep students, comma-separated (default: all).")
]
SweepPrune = Annotated[
    str | None, typer.Option(help="Sweep prune ratios, comma-separated (default 0,0.3,0.5).")
]
SweepQuant = Annotated[
    str | None,
    typer.Option(help="Sweep quantization: fp32,qdq,qoperator,dynamic,weights (default: all)."),
]
Search = Annotated[
    bool,
    typer.Option(
        help="Search the student architecture and its quantization (the run's or fp32) for "
        "a device (Optuna): write search/trials.csv, trials.json, pareto.png; distil the most "
        "accurate finalists within the budgets fully and ship the best."
    ),
]
DeviceProfile = Annotated[
    Path | None,
    typer.Option(help="--search: the target's `fedge profile` JSON (default: measure here)."),
]
MaxLatency = Annotated[
    float | None, typer.Option(help="--search: batch-1 latency budget on the target (µs).")
]
MaxRam = Annotated[
    int | None,
    typer.Option(help="--search: activation arena budget at batch 1 (bytes; memory-aware)."),
]
MaxMacs = Annotated[int | None, typer.Option(help="--search: multiply-accumulates budget.")]
Trials = Annotated[int, typer.Option(help="--search: architectures to try.")]
TimeBudget = Annotated[float, typer.Option(help="--search: seconds the trials may take in all.")]
Out = Annotated[
    Path | None, typer.Option(help="Output directory (default RUN_DIR/compress/<time>).")
]
Verbose = Annotated[bool, typer.Option(help="Show debug logs.")]


@app.command(
    context_settings=EXTRA_ARGS,
    epilog=SETTINGS_HELP.replace("Every setting", "Every compression setting"),
)
def compress(
    ctx: typer.Context,
    run_dir: RunDir,
    scenario: Scenario = None,
    run_config: Pairs = None,
    student: Student = None,
    max_accuracy_drop: MaxDrop = None,
    max_bytes: MaxBytes = None,
    sweep: Sweep = False,
    sweep_students: SweepStudents = None,
    sweep_prune: SweepPrune = None,
    sweep_quant: SweepQuant = None,
    search: Search = False,
    device_profile: DeviceProfile = None,
    max_latency_us: MaxLatency = None,
    max_ram_bytes: MaxRam = None,
    max_macs: MaxMacs = None,
    trials: Trials = 30,
    time_budget: TimeBudget = 480.0,
    out: Out = None,
    verbose: Verbose = False,
) -> None:
    """Re-run compression on a finished run's teacher (no retraining): new signed bundle + report."""
    from fedge.pipeline.ship.gate import NotShippedError
    from fedge.pipeline.ship.recompress import compress_into
    from fedge.simulations.runner import requested_settings

    try:
        changes = requested_settings(scenario, run_config, ctx.args, {"student": student})
        limits = (max_latency_us, max_bytes, max_ram_bytes, max_macs)
        finder = _search(search, device_profile, limits, trials, time_budget)
        grid = _grid(sweep_students, sweep_prune, sweep_quant) if sweep else None
        if not sweep and (sweep_students or sweep_prune or sweep_quant):
            raise ConfigError("--sweep-students/--sweep-prune/--sweep-quant need --sweep")
        request = _request(changes, max_accuracy_drop, max_bytes, grid, finder)
    except (ConfigError, ProfileError) as err:
        raise fail(str(err)) from None
    setup_logging(verbose)
    try:
        target, results = compress_into(run_dir, request, out)
    except NotShippedError as err:  # nothing was written: leave nothing behind
        raise fail(
            f"quality gate: {err}; nothing written. Ship it anyway: --ship-anyway",
            code=NOT_SHIPPED_EXIT,
        ) from None
    except ConfigError as err:  # e.g. no student meets the limit
        raise fail(str(err)) from None
    student_row, teacher = results.compression.student, results.compression.teacher
    assert student_row is not None
    say(
        f"student {100 * student_row.accuracy:.2f} % ({student_row.onnx_bytes:,} bytes, "
        f"{relative_size(student_row.size_ratio)} than the teacher at "
        f"{100 * teacher.accuracy:.2f} %) -> {target}"
    )


def _request(
    changes: dict[str, Any],
    max_accuracy_drop: float | None,
    max_bytes: int | None,
    grid: SweepGrid | None,
    search: SearchConfig | None,
) -> CompressRequest:
    """The request the flags describe; with --search, --max-bytes is the search's budget."""
    from fedge.pipeline.ship.candidates import Choice
    from fedge.pipeline.ship.recompress import CompressRequest

    choice = Choice(max_accuracy_drop=max_accuracy_drop, max_bytes=None if search else max_bytes)
    return CompressRequest(changes, choice, grid, search)


def _search(
    search: bool,
    profile: Path | None,
    limits: tuple[float | None, int | None, int | None, int | None],
    trials: int,
    time_budget: float,
) -> SearchConfig | None:
    """The search `fedge compress` asks for (ConfigError/ProfileError on a bad option).

    `limits`: --max-latency-us, --max-bytes, --max-ram-bytes, --max-macs.
    """
    from fedge.pipeline.ship.search import SearchConfig

    max_latency_us, max_bytes, max_ram_bytes, max_macs = limits
    if not search:
        if profile is not None or max_latency_us is not None:
            raise ConfigError("--device-profile and --max-latency-us need --search")
        if max_ram_bytes is not None or max_macs is not None:
            raise ConfigError("--max-ram-bytes and --max-macs need --search")
        return None
    model = None
    if profile is not None:
        from fedge.compression.energy import energy_model
        from fedge.compression.latency import fit
        from fedge.core.profile import load_profile

        model = fit(load_profile(profile))
        try:  # its energy coefficients, if it states any, are read now rather than mid-search
            energy_model(model)
        except ValueError as err:
            raise ConfigError(f"device profile {profile}: {err}") from None
    return SearchConfig(
        trials=trials,
        time_budget_s=time_budget,
        max_latency_us=max_latency_us,
        max_bytes=max_bytes,
        max_ram_bytes=max_ram_bytes,
        max_macs=max_macs,
        model=model,
    )


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
