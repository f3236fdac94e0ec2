"""Device tiers: one architecture search, then one student and one signed bundle per tier.

The search's trials do not depend on a budget, so one search serves every tier: each tier
takes the most accurate trial within its batch-1 latency budget, which is then distilled fully,
checked against the budget again and shipped through the usual stages. A tier's latency is
predicted on its nodes' device profiles (query.profile) and, for nodes without one, measured on
this machine (the same CPU as simulated nodes). Tiers that choose the same architecture share
its bundle. `bundle/` holds the last tier's bundle (results.json "student" describes it),
`bundles/<tier>/` every tier's.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.compression.bundle import write_bundle
from fedge.compression.latency import Graph, LatencyModel, fit, graph_of
from fedge.core.bundle_format import FILES, MODEL_FILE
from fedge.core.config import RunConfig
from fedge.core.io import atomic_write_json
from fedge.core.ort import make_session, session_call, settled_latency_us
from fedge.core.partition import Federation
from fedge.core.profile import Profile
from fedge.pipeline.chain.teacher_source import KdSource
from fedge.pipeline.ship.candidates import with_quant
from fedge.pipeline.ship.gate import gate_teacher
from fedge.pipeline.ship.phase import Compressed, compress_and_ship
from fedge.pipeline.ship.search import SearchConfig, SearchError, as_trialled, run_search

log = logging.getLogger("fedge")
TIERS_DIR, TIERS_FILE = "bundles", "tiers.json"


def tier_of(partition: int | None, device_class: str, tiers: list[str]) -> str:
    """A node's tier: its device-class if that names a tier, else partition modulo the tiers."""
    if device_class in tiers:
        return device_class
    return tiers[(partition or 0) % len(tiers)]


ATTEMPTS = 3  # architectures distilled fully per tier before its budget is declared missed


def compress_tiers(
    cfg: RunConfig,
    source: KdSource,
    fed: Federation,
    teacher_onnx: bytes,
    key: Any,
    model_id: str,
    profiles: dict[str, list[Profile | None]] | None = None,
) -> tuple[Compressed, list[dict[str, Any]], dict[str, dict[str, bytes]]]:
    """The last tier's compression, every tier's record and every tier's bundle files.

    `profiles`: each tier's nodes' device profiles (None for a node without one, judged on
    this machine). A tier's latency is the slowest of its nodes'. Raises the quality gate's
    NotShippedError before the search, and SearchError when a tier's budget is missed by every
    trial, or by every architecture distilled fully for it (nothing is shipped to anyone).
    """
    budgets = cfg.tier_budgets
    public = cfg.one_public_student()
    val = fed.server.val
    teacher_val, _ = gate_teacher(cfg, make_session(teacher_onnx), val)
    found = run_search(
        public, source, fed, teacher_val, SearchConfig(trials=cfg.search_trials, seed=cfg.seed)
    )
    judges = {t: Judge.of((profiles or {}).get(t, [])) for t in budgets}
    sample = fed.dataset.preprocessing.invert(val.x[:1])  # what a device feeds its model
    compressed: dict[tuple[str, str], Compressed] = {}

    def shipped(trial: dict[str, Any]) -> Compressed:
        spec, quant = trial["student"], as_trialled(trial)
        if (spec, quant) not in compressed:
            log.info("tiers: distilling %s (%s) fully", spec, quant)
            compressed[spec, quant] = compress_and_ship(
                with_quant(public, quant, student=spec), source, fed, teacher_onnx, key, model_id
            )
        return compressed[spec, quant]

    picked: dict[str, tuple[dict[str, Any], float]] = {}
    for name, budget in budgets.items():
        judge = judges[name]
        fits = judge.within(found.trials, budget, name)
        distinct = list({(t["student"], as_trialled(t)): t for t in reversed(fits)}.values())
        distinct.reverse()  # one try per model: trials (spec, qdq refused) and (spec, fp32) are one
        tried = []
        for trial in distinct[:ATTEMPTS]:
            done = shipped(trial)  # the guard may keep or refuse int8 unlike in the trial
            latency = judge.shipped_us(done.shipment.files[MODEL_FILE], sample)
            if latency <= budget:
                picked[name] = (trial, latency)
                break
            tried.append(f"{trial['student']} {as_trialled(trial)} {latency:.1f} µs")
        else:
            raise SearchError(
                f"tier {name!r}: no architecture distilled fully met its budget of {budget:g} µs "
                f"on {judge.where} ({'; '.join(tried)}). Nothing shipped; the trained teacher "
                "is kept: fedge simulate --resume RUN --tiers with other budgets"
            )
    records, bundles = [], {}
    for name, (trial, latency) in picked.items():
        done = shipped(trial)
        student = done.shipment.student
        records.append(
            {
                "tier": name,
                "budget_us": budgets[name],
                "student": trial["student"],
                "quant": as_trialled(trial),  # as distilled; "quantized": whether int8 shipped
                "search_trial": trial,
                "val_accuracy": done.chosen.row["val_accuracy"],
                "test_accuracy": student["accuracy"],
                "bytes": student["onnx_bytes"],
                "quantized": student["quantized"],
                "b1_us": student["latency_us"]["b1_p50"],  # the server, timed beside the teacher
                "latency_us": latency,  # as the tier is judged (Judge.shipped_us)
                "judged_on": judges[name].where,
                "version": student["version"],
            }
        )
        bundles[name] = done.shipment.files
    log.info(
        "tiers: %s",
        "; ".join(f"{r['tier']} ({r['budget_us']:g} µs) -> {r['student']}" for r in records),
    )
    last = shipped(picked[list(budgets)[-1]][0])
    return last, records, bundles


@dataclass(frozen=True)
class Judge:
    """How a tier's latency is judged: its nodes' profiles, and this machine for the others."""

    models: tuple[LatencyModel, ...]
    on_server: bool  # some node of the tier has no profile (or the tier has no nodes)
    where: str

    @classmethod
    def of(cls, profiles: list[Profile | None]) -> Judge:
        """The judge for a tier whose nodes have these profiles."""
        known = {json.dumps(p.latency_us, sort_keys=True): p for p in profiles if p is not None}
        on_server = not profiles or None in profiles
        names = sorted({p.name for p in known.values()}) + (["this machine"] if on_server else [])
        return cls(tuple(fit(p) for p in known.values()), on_server, " and ".join(names))

    def trial_us(self, trial: dict[str, Any]) -> float:
        """A search trial's batch-1 latency on the slowest of the tier's devices."""
        graph = Graph(**trial["graph"])
        figures = [model.predict_us(graph, 1) for model in self.models]
        return max([*figures, *([trial["latency_us"]] if self.on_server else [])])

    def within(
        self, trials: list[dict[str, Any]], budget: float, tier: str
    ) -> list[dict[str, Any]]:
        """The trials within `budget`, most accurate first; SearchError if there are none."""
        fits = [t for t in trials if self.trial_us(t) <= budget]
        if not fits:
            fastest = min(trials, key=self.trial_us)
            raise SearchError(
                f"tier {tier!r}: no architecture of {len(trials)} tried meets its budget "
                f"of {budget:g} µs on {self.where}; the fastest was {fastest['student']} at "
                f"{self.trial_us(fastest):.1f} µs. Nothing shipped; the trained teacher is kept: "
                "fedge simulate --resume RUN --tiers with other budgets"
            )
        return sorted(fits, key=lambda t: (-t["val_accuracy"], self.trial_us(t)))

    def shipped_us(self, model: bytes, sample: np.ndarray) -> float:
        """The shipped model's p50 for its budget check: the slowest of the estimates.

        Its predictions on every profile and, for nodes without one, its time here.
        """
        graph = graph_of(model) if self.models else None
        figures = [m.predict_us(graph, 1) for m in self.models if graph is not None]
        if self.on_server:
            figures.append(timed_us(model, sample))
        return max(figures)


def timed_us(model: bytes, sample: np.ndarray) -> float:
    """p50 µs of one onnxruntime call on `sample`, timed as nodes time it when installing."""
    call = session_call(make_session(model), sample)
    return settled_latency_us({"model": call})["model"]


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
        latency = [c["onnx_us_p50"] for c in nodes if c.get("onnx_us_p50") is not None]
        predict = [c["latency_us_p50"] for c in nodes if c["latency_us_p50"] is not None]
        out.append(
            {
                **{k: v for k, v in record.items() if k != "search_trial"},
                "nodes": len(nodes),
                "installed": sum(c["installed"] for c in nodes),
                # each node's onnxruntime call on one sample, p50, timed when it installed
                "node_latency_us_max": max(latency) if latency else None,
                "node_latency_us_median": _median(latency),
                "node_predict_us_max": max(predict) if predict else None,  # Predictor.predict
                "meets_budget_on_nodes": bool(latency)
                and len(latency) == len(nodes)
                and max(latency) <= record["budget_us"],
            }
        )
    return out


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None
