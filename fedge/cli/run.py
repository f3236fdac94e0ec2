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

if TYPE_CHECKING:
    from fedge.pipeline.candidates import SweepGrid


def _relative_size(ratio: float) -> str:
    """'57.4x smaller', or for a student bigger than its (e.g. linear) teacher '6.5x larger'."""
    return f"{ratio:.1f}x smaller" if ratio >= 1 else f"{1 / ratio:.1f}x larger"


@app.command()
def simulate(
    scenario: Annotated[
        Path | None, typer.Option(help="TOML file of settings (see simulations/).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="digits | mnist1d | npz:PATH")] = None,
    clients: Annotated[int | None, typer.Option(help="Number of simulated clients.")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds.")] = None,
    partition: Annotated[str | None, typer.Option(help="iid | dirichlet | pathological")] = None,
    alpha: Annotated[
        float | None, typer.Option(help="Dirichlet alpha (> 0; smaller is more skewed).")
    ] = None,
    strategy: Annotated[str | None, typer.Option(help="fedavg | fedprox | fedadam")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for splits, init and sampling.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory (must not exist or be empty).")
    ] = None,
    private_key: Annotated[
        Path | None, typer.Option(help="Ed25519 key to sign with (default: new pair).")
    ] = None,
    aggregation: Annotated[
        str | None,
        typer.Option(help="fedavg | median | trimmed-mean | krum | multi-krum | bulyan"),
    ] = None,
    byzantine_fraction: Annotated[
        float | None, typer.Option(help="Share of clients that attack (simulation).")
    ] = None,
    byzantine_mode: Annotated[
        str | None, typer.Option(help="sign-flip | gaussian | label-flip")
    ] = None,
    dropout_fraction: Annotated[
        float | None, typer.Option(help="Share of clients dropping out of each round.")
    ] = None,
    straggler_fraction: Annotated[
        float | None, typer.Option(help="Share of clients replying after the round timeout.")
    ] = None,
    teacher: Annotated[
        str | None, typer.Option(help="Federated model: cnn | linear (for DP training).")
    ] = None,
    teacher_mode: Annotated[
        str | None,
        typer.Option(help="Distill from: global (the model) | ensemble (clients' mean logits)."),
    ] = None,
    dp: Annotated[
        str | None, typer.Option(help="none | central (client-level) | local (DP-SGD).")
    ] = None,
    dp_epsilon: Annotated[
        float | None, typer.Option(help="Target epsilon for the whole run (derives the noise).")
    ] = None,
    dp_delta: Annotated[float | None, typer.Option(help="Delta (default 1e-5).")] = None,
    dp_noise: Annotated[
        float | None, typer.Option(help="Noise multiplier (when no --dp-epsilon).")
    ] = None,
    dp_clip: Annotated[
        float | None, typer.Option(help="Clipping norm: update (central), gradient (local).")
    ] = None,
    dp_clipping: Annotated[
        str | None, typer.Option(help="Central DP: clip on the server | client.")
    ] = None,
    dp_clip_mode: Annotated[
        str | None, typer.Option(help="Central DP: fixed | adaptive clipping norm.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the unfinished run in this directory from its checkpoint."),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's and Ray's logs.")] = False,
) -> None:
    """Train a teacher federatedly, compress it, sign it and redistribute it to every client."""
    from fedge.simulations.runner import build_config, preflight
    from fedge.simulations.runner import simulate as run

    flags = {
        "dataset": dataset,
        "clients": clients,
        "rounds": rounds,
        "partition": partition,
        "alpha": alpha,
        "strategy": strategy,
        "seed": seed,
        "out": None if out is None else str(out),
        "private-key": None if private_key is None else str(private_key.resolve()),
        "aggregation": aggregation,
        "byzantine-fraction": byzantine_fraction,
        "byzantine-mode": byzantine_mode,
        "dropout-fraction": dropout_fraction,
        "straggler-fraction": straggler_fraction,
        "teacher": teacher,
        "teacher-mode": teacher_mode,
        "dp": dp,
        "dp-epsilon": dp_epsilon,
        "dp-delta": dp_delta,
        "dp-noise": dp_noise,
        "dp-clip": dp_clip,
        "dp-clipping": dp_clipping,
        "dp-clip-mode": dp_clip_mode,
    }
    try:
        cfg = build_config(scenario, flags, resume=resume)
        preflight(cfg)
    except ConfigError as err:
        raise fail(str(err)) from None
    setup_logging(verbose)
    console.print(
        f"fedge simulate: {cfg.dataset}, {cfg.clients} clients, {cfg.partition}, "
        f"{cfg.rounds} rounds -> {cfg.out}",
        highlight=False,
    )
    run_dir = run(cfg, verbose=verbose)
    _summary(run_dir)


@app.command()
def compress(
    run_dir: Annotated[Path, typer.Argument(help="A finished `fedge simulate` run directory.")],
    scenario: Annotated[
        Path | None, typer.Option(help="TOML file of compression settings.")
    ] = None,
    student: Annotated[
        str | None, typer.Option(help="tiny | small-fast | small | medium-fast | medium")
    ] = None,
    kd_epochs: Annotated[int | None, typer.Option(help="Distillation epochs.")] = None,
    kd_labels: Annotated[
        str | None, typer.Option(help="soft (tempered probabilities) | hard (top class).")
    ] = None,
    kd_queries: Annotated[
        str | None,
        typer.Option(help="Teacher labels: augmented (every view) | pool (the samples only)."),
    ] = None,
    prune_ratio: Annotated[float | None, typer.Option(help="Share of channels removed.")] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="KD epochs after pruning.")] = None,
    sparsity: Annotated[
        float | None, typer.Option(help="Share of weights zeroed by magnitude (gzip size only).")
    ] = None,
    quant_mode: Annotated[
        str | None, typer.Option(help="dynamic (MatMul only) | static | none (fp32)")
    ] = None,
    quant_format: Annotated[str | None, typer.Option(help="qdq | qoperator")] = None,
    quant_per_channel: Annotated[
        bool | None, typer.Option(help="Per-channel (or per-tensor) int8 weight scales.")
    ] = None,
    quant_calibration: Annotated[
        str | None, typer.Option(help="minmax | entropy | percentile")
    ] = None,
    int8_tolerance: Annotated[
        float | None, typer.Option(help="Validation accuracy int8 may lose.")
    ] = None,
    teacher_mode: Annotated[
        str | None,
        typer.Option(help="global | ensemble (needs the run's saved ensemble logits)."),
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
    out: Annotated[
        Path | None, typer.Option(help="Output directory (default RUN_DIR/compress/<time>).")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Show debug logs.")] = False,
) -> None:
    """Re-run compression on a finished run's teacher (no retraining): new signed bundle + report."""
    from fedge.pipeline.candidates import Choice
    from fedge.pipeline.recompress import compress_config, compress_run
    from fedge.pipeline.rundir import staged_run_dir, timestamped_out
    from fedge.simulations.runner import load_scenario

    flags = {
        "student": student,
        "kd-epochs": kd_epochs,
        "kd-labels": kd_labels,
        "kd-queries": kd_queries,
        "prune-ratio": prune_ratio,
        "finetune-epochs": finetune_epochs,
        "sparsity": sparsity,
        "quant-mode": quant_mode,
        "quant-format": quant_format,
        "quant-per-channel": quant_per_channel,
        "quant-calibration": quant_calibration,
        "int8-tolerance": int8_tolerance,
        "teacher-mode": teacher_mode,
    }
    try:
        changes = load_scenario(scenario) if scenario is not None else {}
        changes.update({k: v for k, v in flags.items() if v is not None})
        cfg, teacher_params = compress_config(run_dir, changes)
        choice = Choice(max_accuracy_drop=max_accuracy_drop, max_bytes=max_bytes)
        grid = _grid(sweep_students, sweep_prune, sweep_quant) if sweep else None
        if not sweep and (sweep_students or sweep_prune or sweep_quant):
            raise ConfigError("--sweep-students/--sweep-prune/--sweep-quant need --sweep")
    except ConfigError as err:
        raise fail(str(err)) from None
    target = (out or timestamped_out(run_dir, "compress")).expanduser().resolve()
    if target.exists() and any(target.iterdir()):
        raise fail(f"out {target} already exists and is not empty; choose a new --out")
    setup_logging(verbose)
    try:
        with staged_run_dir(target) as work:
            results = compress_run(run_dir, cfg, work, teacher_params, choice, grid)
    except ConfigError as err:  # e.g. no student meets the limit: nothing was written
        raise fail(str(err)) from None
    student_row = results["student"]
    console.print(
        f"student {100 * student_row['accuracy']:.2f} % ({student_row['onnx_bytes']:,} bytes, "
        f"{_relative_size(student_row['size_ratio'])} than the teacher at "
        f"{100 * results['teacher']['accuracy']:.2f} %) -> {target}",
        highlight=False,
    )


def _grid(students: str | None, prune: str | None, quant: str | None) -> SweepGrid:
    """The sweep grid from comma-separated flag values (defaults where a flag is not given)."""
    from fedge.pipeline.candidates import SweepGrid

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
    from fedge.pipeline.audit import check_shadows, load_target, run_audit
    from fedge.pipeline.audit_report import add_to_report
    from fedge.pipeline.rundir import staged_run_dir, timestamped_out

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
