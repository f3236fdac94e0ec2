"""`fedge compress` (and `fedge.compress`): compress a finished run's teacher again, no retraining."""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedge.compression.bundle import PRIVATE_KEY_FILE, load_private_key, write_bundle
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.archspec import check_student
from fedge.core.config import COMPRESSION_SETTINGS, ConfigError, RunConfig
from fedge.core.ort import make_session
from fedge.core.partition import build_federation
from fedge.pipeline.chain.federate import saved
from fedge.pipeline.chain.stages import CompressionConfig
from fedge.pipeline.chain.teacher_source import global_source, stored_source
from fedge.pipeline.outputs.results import CompressResults, write_compress_outputs
from fedge.pipeline.rundir.paths import (
    BUNDLE_DIR,
    KEYS_DIR,
    RESULTS_FILE,
    TEACHER_FILE,
    FinishedRun,
    check_new_out,
    run_model,
    staged_run_dir,
    timestamped_out,
)
from fedge.pipeline.ship.candidates import Choice, NoCandidateError, SweepGrid, candidate_configs
from fedge.pipeline.ship.gate import gate_teacher
from fedge.pipeline.ship.job import Compressed, CompressionJob, compress_and_ship
from fedge.pipeline.ship.search import SearchConfig, SearchResult, run_search, searched
from fedge.pipeline.ship.search_output import write_search
from fedge.pipeline.ship.sweep_output import sweep_table, write_sweep

log = logging.getLogger("fedge")
BYTES_UNLIMITED = 1 << 62  # a choice by accuracy alone (Choice's max-bytes rule)


@dataclass(frozen=True)
class CompressRequest:
    """What a user asks `fedge compress` for: changed settings, a choice, a sweep or a search.

    ConfigError when the parts cannot go together.
    """

    changes: dict[str, Any] = field(default_factory=dict)  # kebab-case compression settings
    choice: Choice = Choice()
    grid: SweepGrid | None = None
    search: SearchConfig | None = None

    def __post_init__(self) -> None:
        if self.search is None:
            return
        if clash := self._search_clash():
            raise ConfigError(f"--search chooses the student: not with {clash}")
        source = self.changes.get("kd-source", "public")
        if source in ("federated", "both"):  # trials and the final student use the pool
            raise ConfigError(
                f"--search distils on the public pool; kd-source {source!r} needs the run's "
                "clients: allowed with --search: public, auto"
            )
        object.__setattr__(self, "changes", {**self.changes, "kd-source": "public"})

    def _search_clash(self) -> str | None:
        """What else chooses the student, named as the user gave it; None if nothing does."""
        if self.grid is not None:
            return "--sweep"
        if self.choice.active:
            return "--max-accuracy-drop"
        if "student" in self.changes:
            student = self.changes["student"]
            return f"student {student!r} (from --student, --scenario or --run-config)"
        return None


def compress_into(
    run_dir: Path, request: CompressRequest, out: Path | None = None
) -> tuple[Path, CompressResults]:
    """The one entry of `fedge compress` and `fedge.compress`: returns where it wrote and what.

    Everything that can be checked is checked before anything is written (ConfigError); the
    output is built in OUT.partial and renamed when complete, and a failure leaves nothing,
    not even an empty RUN/compress/ directory.
    """
    run_dir = Path(run_dir).expanduser().resolve()
    cfg, teacher_params = compress_config(run_dir, request.changes)
    target = Path(out or timestamped_out(run_dir, "compress")).expanduser().resolve()
    check_new_out(target)
    new_parent = not target.parent.exists()  # RUN/compress/ on the first compress of a run
    unmet: NoCandidateError | None = None
    try:
        with staged_run_dir(target) as work:
            try:
                results = compress_run(run_dir, cfg, work, teacher_params, request)
            except NoCandidateError as err:  # a sweep keeps its table: what to loosen, by how much
                if request.grid is None or request.search is not None:
                    raise
                write_sweep(work, sweep_table(err.candidates, None, err.choice, _teacher_val(err)))
                unmet = err
    except BaseException:
        if new_parent and target.parent.is_dir() and not any(target.parent.iterdir()):
            target.parent.rmdir()
        raise
    if unmet is not None:
        raise ConfigError(f"{unmet}; the sweep's table and plots: {target}") from None
    return target, results


def _teacher_val(err: NoCandidateError) -> float:
    """The teacher's validation accuracy, as every candidate's drop was measured against it."""
    row = err.candidates[0].row
    return row.val_accuracy + row.drop_pt / 100


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
    finished = FinishedRun.read(run_dir)
    stored = finished.cfg.to_run_config()
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
    _check_federated_replay(cfg, finished.cfg)
    _, teacher = run_model(run_dir / TEACHER_FILE)  # loads, or one line naming the file
    teacher_input = teacher.get_inputs()[0]
    try:
        check_student(cfg.student, tuple(int(d) for d in teacher_input.shape[1:]))
    except ValueError as err:
        raise ConfigError(f"student: {err}") from None
    return cfg, finished.teacher_params


def _check_federated_replay(cfg: RunConfig, stored: RunConfig) -> None:
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
    run_dir: Path, cfg: RunConfig, out: Path, teacher_params: int, request: CompressRequest
) -> CompressResults:
    """Compress the run's teacher with `cfg`'s settings into `out` (which must exist, empty).

    With an active choice, students from STUDENTS (smallest first) are compressed with the
    other settings until one satisfies it. With a grid, every grid point is compressed, the
    choice (default: within DEFAULT_SWEEP_DROP points) is made among them, and the table and
    Pareto plots are written too. Choices are made on the validation split (the device model on
    raw input); ConfigError if no candidate satisfies the limit. With a search, an architecture
    search (fedge.pipeline.ship.search) picks the finalists first, which are then distilled
    fully on the public pool; SearchError if nothing meets its budget.
    """
    start = time.monotonic()
    job = _job(Path(run_dir), cfg)
    choice, grid, found = request.choice, request.grid, None
    if request.search is not None:
        found, choice, grid, job = _searched_finalists(job, request.search)
    compressed = compress_and_ship(
        job,
        choice=choice,
        grid=grid,
        federated=saved(run_dir),  # the run's own clients' rounds
    )
    write_bundle(compressed.shipment.files, out / BUNDLE_DIR)
    sweep = grid is not None and request.search is None
    record = dataclasses.replace(compressed.record(), choice=compressed.choice_record(sweep))
    teacher = dataclasses.replace(record.teacher, params=teacher_params)
    results = CompressResults(
        run_id=run_dir.name,
        source_run=str(run_dir),
        config=compressed.chosen.cfg.to_run_config(),
        compression=dataclasses.replace(record, teacher=teacher),
        privacy=FinishedRun.read(run_dir).privacy,  # post-processing: the guarantee carries over
        timing_s={"compression": time.monotonic() - start},
    )
    if sweep:
        table = sweep_table(
            compressed.candidates, compressed.chosen, compressed.choice, compressed.teacher_val
        )
        write_sweep(out, table)
    if request.search is not None and found is not None:
        summary = _search_summary(compressed, request.search, found)
        results = dataclasses.replace(results, search=summary)
        write_search(out, found.trials, summary)
    write_compress_outputs(results, out)
    return results


def _job(run_dir: Path, cfg: RunConfig) -> CompressionJob:
    """The finished run's teacher, data and key, with `cfg`'s settings."""
    fed = build_federation(cfg)
    teacher_onnx = (run_dir / TEACHER_FILE).read_bytes()
    source = global_source(OnnxTeacher(teacher_onnx), fed.server.public_pool)
    if cfg.teacher_mode == "ensemble":
        source = stored_source(run_dir, cfg.ensemble_views)
    try:
        key = load_private_key(run_dir / KEYS_DIR / PRIVATE_KEY_FILE)
    except ValueError as err:  # the run's own key, refused as any key file a user names
        raise ConfigError(f"{err}; fedge compress signs with the run's key") from None
    return CompressionJob(cfg, source, fed, teacher_onnx, key, run_dir.name)


def _searched_finalists(
    job: CompressionJob, search: SearchConfig
) -> tuple[SearchResult, Choice, SweepGrid, CompressionJob]:
    """Run the search; its finalists become a grid distilled fully, the most accurate ships."""
    val = job.fed.server.val
    teacher_val, _ = gate_teacher(job.cfg, make_session(job.teacher_onnx), val)  # first
    found = run_search(job.cfg, job.source, job.fed, teacher_val, search)
    pairs = tuple((f["student"], f["quant"]) for f in found.finalists)
    cfg = job.cfg.one_public_student().replace(student=pairs[0][0])
    students, quants = (tuple(dict.fromkeys(p[i] for p in pairs)) for i in (0, 1))
    grid = SweepGrid(students, (cfg.prune_ratio,), quants, only=pairs)
    choice = Choice(max_bytes=search.max_bytes or BYTES_UNLIMITED)
    return found, choice, grid, job.with_settings(cfg)


def _search_summary(
    compressed: Compressed, search: SearchConfig, found: SearchResult
) -> dict[str, Any]:
    """results.json "search" (SearchError if the shipped student misses the search's budget)."""
    finalists = [c.row for c in compressed.candidates]
    return searched(found, search, compressed.shipment, finalists, compressed.chosen.row.quant)
