"""Device tiers: one architecture search, then one student and one signed bundle per tier.

The search's trials do not depend on a budget, so one search serves every tier: each tier
takes the most accurate trial within its batch-1 latency budget (measured on the server, the
same CPU as simulated nodes), which is then distilled fully and shipped through the usual
stages. Tiers that choose the same architecture share its bundle. `bundle/` holds the last
tier's bundle (results.json "student" describes it), `bundles/<tier>/` every tier's.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from fedge.compression.bundle import write_bundle
from fedge.core.bundle_format import FILES
from fedge.core.config import RunConfig
from fedge.core.io import atomic_write_json
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import Federation
from fedge.pipeline.gate import check_teacher
from fedge.pipeline.phase import Compressed, compress_and_ship
from fedge.pipeline.search import SearchConfig, SearchError, search
from fedge.pipeline.teacher_source import KdSource

log = logging.getLogger("fedge")
TIERS_DIR, TIERS_FILE = "bundles", "tiers.json"


def tier_of(partition: int | None, device_class: str, tiers: list[str]) -> str:
    """A node's tier: its device-class if that names a tier, else partition modulo the tiers."""
    if device_class in tiers:
        return device_class
    return tiers[(partition or 0) % len(tiers)]


def compress_tiers(
    cfg: RunConfig,
    source: KdSource,
    fed: Federation,
    teacher_onnx: bytes,
    key: Any,
    model_id: str,
) -> tuple[Compressed, list[dict[str, Any]], dict[str, dict[str, bytes]]]:
    """The last tier's compression, every tier's record and every tier's bundle files.

    Raises the quality gate's NotShippedError before the search, and SearchError when a tier's
    budget is below every trial's latency (nothing is shipped to anyone).
    """
    budgets = cfg.tier_budgets
    public = cfg.replace(kd_source="public", tiers="")  # one student at a time from here
    val = fed.server.val
    teacher_val = session_accuracy(make_session(teacher_onnx), val.x, val.y)
    check_teacher(cfg, teacher_val, val.y)
    found = search(
        public, source, fed, teacher_val, SearchConfig(trials=cfg.search_trials, seed=cfg.seed)
    )
    ranked = {}
    for name, budget in budgets.items():
        fits = [t for t in found.trials if t["latency_us"] <= budget]
        if not fits:
            fastest = min(found.trials, key=lambda t: t["latency_us"])
            raise SearchError(
                f"tier {name!r}: no architecture of {len(found.trials)} tried meets its budget "
                f"of {budget:g} µs; the fastest was {fastest['student']} at "
                f"{fastest['latency_us']:.1f} µs. Nothing shipped; the trained teacher is kept: "
                "fedge simulate --resume RUN --tiers with other budgets"
            )
        ranked[name] = sorted(fits, key=lambda t: (-t["val_accuracy"], t["latency_us"]))
    compressed: dict[str, Compressed] = {}

    def shipped(trial: dict[str, Any]) -> Compressed:
        spec = trial["student"]
        if spec not in compressed:
            log.info("tiers: distilling %s fully", spec)
            compressed[spec] = compress_and_ship(
                public.replace(student=spec), source, fed, teacher_onnx, key, model_id
            )
        return compressed[spec]

    picked = {}
    for name, fits in ranked.items():
        for trial in fits:  # int8 refused after full distillation: fp32 may miss the budget
            if shipped(trial).shipment.student["quantized"] or not trial["quantized"]:
                picked[name] = trial
                break
            log.warning("tiers: %s shipped fp32, not the int8 its trial timed", trial["student"])
        else:
            raise SearchError(
                f"tier {name!r}: every architecture within its budget lost int8 after full "
                "distillation. Nothing shipped."
            )
    records, bundles = [], {}
    for name, trial in picked.items():
        done = compressed[trial["student"]]
        student = done.shipment.student
        records.append(
            {
                "tier": name,
                "budget_us": budgets[name],
                "student": trial["student"],
                "search_trial": trial,
                "val_accuracy": done.chosen.row["val_accuracy"],
                "test_accuracy": student["accuracy"],
                "bytes": student["onnx_bytes"],
                "quantized": student["quantized"],
                "b1_us": student["latency_us"]["b1_p50"],  # the server, timed beside the teacher
                "version": student["version"],
            }
        )
        bundles[name] = done.shipment.files
    log.info(
        "tiers: %s",
        "; ".join(f"{r['tier']} ({r['budget_us']:g} µs) -> {r['student']}" for r in records),
    )
    last = compressed[picked[list(budgets)[-1]]["student"]]
    return last, records, bundles


def save_tiers(
    run_dir: Path, records: list[dict[str, Any]], bundles: dict[str, dict[str, bytes]]
) -> None:
    """bundles/<tier>/ and tiers.json (written before the run's own compressed record)."""
    for name, files in bundles.items():
        write_bundle(files, run_dir / TIERS_DIR / name)
    atomic_write_json(run_dir / TIERS_FILE, records)


def load_tiers(
    run_dir: Path, budgets: dict[str, float]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, bytes]]] | None:
    """What save_tiers wrote for these budgets, or None (then compression runs again)."""
    try:
        records = json.loads((run_dir / TIERS_FILE).read_text())
        bundles = {
            r["tier"]: {f: (run_dir / TIERS_DIR / r["tier"] / f).read_bytes() for f in FILES}
            for r in records
        }
        if {r["tier"]: r["budget_us"] for r in records} != budgets:
            log.info("tiers changed since the bundles were made: compressing again")
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return records, bundles


def clear_tiers(run_dir: Path) -> None:
    """Remove every tier's bundle and the record (before compressing again)."""
    (run_dir / TIERS_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / TIERS_DIR, ignore_errors=True)


def tier_summary(
    records: list[dict[str, Any]], clients: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """results.json "tiers": each tier's student and what its nodes measured when installing."""
    out = []
    for record in records:
        nodes = [c for c in clients if c.get("tier") == record["tier"]]
        latency = [c["latency_us_p50"] for c in nodes if c["latency_us_p50"] is not None]
        out.append(
            {
                **{k: v for k, v in record.items() if k != "search_trial"},
                "nodes": len(nodes),
                "installed": sum(c["installed"] for c in nodes),
                "node_latency_us_max": max(latency) if latency else None,
                "node_latency_us_median": sorted(latency)[len(latency) // 2] if latency else None,
                "meets_budget_on_nodes": bool(latency) and max(latency) <= record["budget_us"],
            }
        )
    return out
