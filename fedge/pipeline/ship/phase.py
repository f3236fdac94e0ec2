"""The compression phase of a run: one student or one per tier, signed, saved, resumable.

The server hands this phase a CompressionJob and the two things only Flower can do (the
student's rounds on the clients, the nodes' device profiles); the phase chooses between one
student and device tiers, and owns the run directory's compression files: a resumed run
reuses the bundle(s) an earlier try saved (same bytes, same version) or clears what an
interrupted try left and compresses again.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fedge.compression.bundle import write_bundle
from fedge.core.budgets import Budget
from fedge.core.bundle_format import FILES
from fedge.core.io import atomic_write_json
from fedge.core.profile import Profile
from fedge.pipeline.chain.federate import FederatedTrainer
from fedge.pipeline.outputs.rows import CompressionRecord, TierRecord
from fedge.pipeline.rundir.paths import BUNDLE_DIR, COMPRESSED_FILE, TIERS_DIR, TIERS_FILE
from fedge.pipeline.ship.gate import NotShippedError
from fedge.pipeline.ship.job import CompressionJob, compress_and_ship, not_shipped_record
from fedge.pipeline.ship.tiers import MEASURED, TierTools, compress_tiers

log = logging.getLogger("fedge")


@dataclass(frozen=True)
class ClientCalls:
    """What the phase needs the federation for: each is called only when the settings ask."""

    student_rounds: Callable[[], FederatedTrainer]  # the student's rounds on the clients
    node_profiles: Callable[[], dict[str, list[Profile | None]]]  # each tier's nodes' profiles


@dataclass
class PhaseResult:
    """What compression gave the run: its record, the bundle files (none when not shipped)."""

    record: CompressionRecord
    files: dict[str, bytes] = field(default_factory=dict)
    tiers: list[TierRecord] = field(default_factory=list)
    tier_bundles: dict[str, dict[str, bytes]] = field(default_factory=dict)


def compression_phase(
    job: CompressionJob,
    run_dir: Path,
    calls: ClientCalls,
    *,
    resume: bool = False,
    tools: TierTools = MEASURED,
) -> PhaseResult:
    """The run's compression, made now or by an earlier try of the same run (`resume`).

    The quality gate's refusal is a result (nothing shipped), not an error; SearchError (a
    tier budget nothing meets) propagates, and the trained teacher stays for a resume.
    """
    saved = load_saved(run_dir, job) if resume else None
    if saved is not None:
        assert saved.record.student is not None
        log.info(
            "resuming with the bundle this run already made (version %d)",
            saved.record.student.version,
        )
        return saved
    clear_saved(run_dir)  # whatever an interrupted try left
    try:
        if job.cfg.tiers:
            tiers = compress_tiers(job, calls.node_profiles(), tools)
            last = tiers.bundles[tiers.records[-1].tier]  # bundle/: the last tier's
            result = PhaseResult(tiers.last.record(), last, tiers.records, tiers.bundles)
        else:
            trainer = calls.student_rounds() if job.cfg.distill_from != "public" else None
            compressed = compress_and_ship(job, federated=trainer)
            result = PhaseResult(compressed.record(), compressed.shipment.files)
    except NotShippedError as stop:
        return PhaseResult(not_shipped_record(stop.gate, job))
    save(run_dir, result)
    return result


def save(run_dir: Path, result: PhaseResult) -> None:
    """Each tier's bundle and tiers.json, then bundle/ and its record (written last, atomically).

    A resumed run reuses all of it only once the record exists.
    """
    for name, files in result.tier_bundles.items():
        write_bundle(files, run_dir / TIERS_DIR / name)
    if result.tiers:
        atomic_write_json(run_dir / TIERS_FILE, [t.to_json() for t in result.tiers])
    write_bundle(result.files, run_dir / BUNDLE_DIR)
    atomic_write_json(run_dir / COMPRESSED_FILE, result.record.to_json())


def load_saved(run_dir: Path, job: CompressionJob) -> PhaseResult | None:
    """What an earlier try of this run saved for these settings, or None (compress again).

    A bundle without its record (a crash between the writes), tiers for other budgets (or
    none where tiers are asked, or tiers where none are) and anything unreadable are redone.
    """
    try:
        record = CompressionRecord.from_json(json.loads((run_dir / COMPRESSED_FILE).read_text()))
        files = _read_bundle(run_dir / BUNDLE_DIR)
        tiers, bundles = _load_tiers(run_dir) if job.cfg.tiers else ([], {})
    except (OSError, ValueError) as err:
        if (run_dir / COMPRESSED_FILE).exists():
            log.warning("the saved bundle cannot be reused (%s); compressing again", err)
        return None
    if bool(job.cfg.tiers) != (run_dir / TIERS_FILE).is_file():
        return None  # tiers asked for now and not then, or the other way round
    made_for = {t.tier: Budget.from_json(t.budget or {"latency_us": t.budget_us}) for t in tiers}
    margins = {t.latency_margin for t in tiers}
    if made_for != job.cfg.tier_budgets or margins - {job.cfg.tier_latency_margin}:
        log.info("tiers changed since the bundles were made: compressing again")
        return None
    return PhaseResult(record, files, tiers, bundles)


def clear_saved(run_dir: Path) -> None:
    """Remove the record, the bundle and every tier's bundle (before compressing again)."""
    (run_dir / COMPRESSED_FILE).unlink(missing_ok=True)
    (run_dir / TIERS_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / BUNDLE_DIR, ignore_errors=True)
    shutil.rmtree(run_dir / TIERS_DIR, ignore_errors=True)


def _load_tiers(run_dir: Path) -> tuple[list[TierRecord], dict[str, dict[str, bytes]]]:
    """tiers.json and each tier's bundle (OSError/ValueError if anything is missing)."""
    data = json.loads((run_dir / TIERS_FILE).read_text())
    if not isinstance(data, list):
        raise ValueError(f"{TIERS_FILE} is not a list")
    records = [TierRecord.from_json(item) for item in data]
    return records, {r.tier: _read_bundle(run_dir / TIERS_DIR / r.tier) for r in records}


def _read_bundle(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in FILES}
