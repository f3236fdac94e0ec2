"""`fedge compress`: re-run the compression phase on a finished run's teacher, no retraining."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from fedge.compression.bundle import PRIVATE_KEY_FILE, load_private_key, write_bundle
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.archspec import check_student
from fedge.core.config import COMPRESSION_SETTINGS, ConfigError, RunConfig
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.ort import make_session
from fedge.core.partition import build_federation
from fedge.pipeline.chain.federate import saved
from fedge.pipeline.chain.teacher_source import global_source, stored_source
from fedge.pipeline.outputs.report import render_compression_report
from fedge.pipeline.rundir.paths import (
    BUNDLE_DIR,
    KEYS_DIR,
    REPORT_FILE,
    RESULTS_FILE,
    TEACHER_FILE,
)
from fedge.pipeline.chain.stages import CompressionConfig
from fedge.pipeline.ship.candidates import Choice, SweepGrid, candidate_configs
from fedge.pipeline.ship.gate import gate_teacher
from fedge.pipeline.ship.phase import compress_and_ship
from fedge.pipeline.ship.search import SearchConfig, run_search, searched
from fedge.pipeline.ship.search_output import write_search
from fedge.pipeline.ship.sweep_output import sweep_table, write_sweep

log = logging.getLogger("fedge")
BYTES_UNLIMITED = 1 << 62  # a choice by accuracy alone (Choice's max-bytes rule)


def compress_config(run_dir: Path, changes: dict[str, Any]) -> tuple[RunConfig, int]:
    """The finished run's config with compression settings changed, and the teacher's size.

    ConfigError if `run_dir` is not a finished run with a teacher, or a change is not a
    compression setting.
    """
    run_dir = Path(run_dir)
    for name in (RESULTS_FILE, TEACHER_FILE, f"keys/{PRIVATE_KEY_FILE}"):
        if not (run_dir / name).is_file():
            raise ConfigError(
                f"{run_dir} is not a finished fedge run with a teacher: {name} is missing"
            )
    try:
        source = json.loads((run_dir / RESULTS_FILE).read_text())
        stored, teacher_params = source["config"], source["teacher"]["params"]
    except (ValueError, KeyError, UnicodeDecodeError) as err:
        raise ConfigError(f"{run_dir / RESULTS_FILE} has no readable config: {err}") from err
    # unknown keys and bad values; one bundle whatever the run's device tiers were
    cfg = RunConfig.from_run_config({**stored, **changes, "tiers": ""})
    bad = sorted(
        k for k, v in changes.items() if k not in COMPRESSION_SETTINGS and stored.get(k) != v
    )
    if bad:
        raise ConfigError(
            f"fedge compress cannot change {', '.join(bad)} (that needs a new run); "
            f"allowed: {', '.join(COMPRESSION_SETTINGS)}"
        )
    _check_federated_replay(run_dir, cfg, RunConfig.from_run_config(stored))
    try:
        teacher_input = make_session((run_dir / TEACHER_FILE).read_bytes()).get_inputs()[0]
        check_student(cfg.student, tuple(int(d) for d in teacher_input.shape[1:]))
    except ValueError as err:
        raise ConfigError(f"student: {err}") from None
    return cfg, int(teacher_params)


def _check_federated_replay(run_dir: Path, cfg: RunConfig, stored: RunConfig) -> None:
    """ConfigError up front when the settings need student rounds the run's clients never ran.

    The rounds' result depends on the teacher it learned from and on every stage up to and
    including `federate`: the candidates' chain prefixes must be the run's own.
    """
    if cfg.distill_from == "public":
        return
    changed = _federated_changes(cfg, stored)
    if stored.distill_from == "public" or changed:
        why = f"{', '.join(changed)} changed" if changed else "the run had no student rounds"
        raise ConfigError(
            f"kd-source {cfg.kd_source!r} needs student rounds on the run's clients, which are "
            f"gone ({why}); allowed: the run's own {', '.join(changed) or 'kd-source'}, or "
            "kd-source public"
        )


def _federated_changes(cfg: RunConfig, stored: RunConfig) -> list[str]:
    """Settings (kebab-case) that change what the student's federated rounds start from or do."""

    def prefixes(run: RunConfig) -> list[tuple[Any, ...]]:
        configs, _, _ = candidate_configs(run, Choice(), None)
        return [CompressionConfig.from_run(c).through("federate") for c in configs]

    now, then = cfg.to_run_config(), {**stored.to_run_config(), "tiers": ""}
    before = prefixes(RunConfig.from_run_config(then))
    changed = []
    for key in (k for k in now if now[k] != then[k]):  # which of them reach the prefix
        try:
            alone = prefixes(RunConfig.from_run_config({**then, key: now[key]}))
        except ConfigError:  # valid only with the other changes: count it as a change
            alone = []
        if key == "teacher-mode" or alone != before:
            changed.append(key)
    return changed


def compress_run(
    run_dir: Path,
    cfg: RunConfig,
    out: Path,
    teacher_params: int,
    choice: Choice | None = None,
    grid: SweepGrid | None = None,
    search: SearchConfig | None = None,
) -> dict[str, Any]:
    """Compress the run's teacher with `cfg`'s settings into `out` (which must exist, empty).

    With an active `choice`, students from STUDENTS (smallest first) are compressed with the
    other settings until one satisfies it. With a `grid`, every grid point is compressed, the
    choice (default: within DEFAULT_SWEEP_DROP points) is made among them, and the table and
    Pareto plots are written too. Choices are made on the validation split (the device model on
    raw input); ConfigError if no candidate satisfies the limit. With `search`, an architecture
    search (fedge.pipeline.ship.search) picks the student first, which is then distilled fully on the
    public pool; SearchError if nothing meets its budget.
    """
    start = time.monotonic()
    run_dir = Path(run_dir)
    fed = build_federation(cfg)
    teacher_onnx = (run_dir / TEACHER_FILE).read_bytes()
    source = global_source(OnnxTeacher(teacher_onnx), fed.server.public_pool)
    if cfg.teacher_mode == "ensemble":
        source = stored_source(run_dir, cfg.ensemble_views)
    key = load_private_key(run_dir / KEYS_DIR / PRIVATE_KEY_FILE)
    found = None
    if search is not None:
        teacher_val, _ = gate_teacher(cfg, make_session(teacher_onnx), fed.server.val)  # first
        found = run_search(cfg, source, fed, teacher_val, search)
        pairs = tuple((f["student"], f["quant"]) for f in found.finalists)
        cfg = cfg.one_public_student().replace(student=pairs[0][0])
        # The finalists distilled fully; the most accurate on validation ships.
        students, quants = (tuple(dict.fromkeys(p[i] for p in pairs)) for i in (0, 1))
        grid = SweepGrid(students, (cfg.prune_ratio,), quants, only=pairs)
        choice = Choice(max_bytes=search.max_bytes or BYTES_UNLIMITED)
    compressed = compress_and_ship(
        cfg,
        source,
        fed,
        teacher_onnx,
        key,
        run_dir.name,
        choice=choice,
        grid=grid,
        federated=saved(run_dir),  # student rounds: the run's own clients' result
    )
    shipment, chosen = compressed.shipment, compressed.chosen
    write_bundle(shipment.files, out / BUNDLE_DIR)
    privacy = json.loads((run_dir / RESULTS_FILE).read_text()).get("privacy")
    results = _results(run_dir, chosen, source.summary, shipment, teacher_params, privacy)
    results["student_rounds"] = chosen.outcome.federated
    results["quality_gate"] = compressed.gate
    results["timing_s"] = {"compression": time.monotonic() - start}
    results["choice"] = compressed.choice_json(sweep=grid is not None and search is None)
    if grid is not None and search is None:
        table = sweep_table(
            compressed.candidates, chosen, compressed.choice, compressed.teacher_val
        )
        write_sweep(out, table)
    if search is not None and found is not None:
        finalists = [c.row for c in compressed.candidates]
        results["search"] = searched(
            found, search, compressed.shipment, finalists, chosen.row["quant"]
        )
        write_search(out, found.trials, results["search"])
    atomic_write_json(out / RESULTS_FILE, results)
    atomic_write_bytes(out / REPORT_FILE, render_compression_report(results).encode())
    return results


def _results(
    run_dir: Path,
    chosen: Any,
    ensemble: dict[str, Any],
    shipment: Any,
    teacher_params: int,
    privacy: dict[str, Any] | None,
) -> dict[str, Any]:
    """results.json of `fedge compress` (the choice and timing are added by the caller)."""
    return {
        "run_id": run_dir.name,
        "source_run": str(run_dir),
        "config": chosen.cfg.to_run_config(),
        "compression_config": chosen.compression.to_json(),
        "ensemble": ensemble,
        "privacy": privacy,  # post-processing of the same teacher: its guarantee carries over
        "teacher": {**shipment.teacher, "params": teacher_params},
        "stages": chosen.outcome.stages,
        "student": {**shipment.student, "architecture": chosen.cfg.student},
    }
