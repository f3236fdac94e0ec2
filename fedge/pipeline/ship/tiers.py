"""Device tiers: one architecture search, then one student and one signed bundle per tier.

The search's trials do not depend on a budget, so one search serves every tier: each tier
takes the most accurate trial within its budget (fedge.core.budgets: a batch-1 latency and/or
exact limits on flash, activation RAM and MACs), which is then distilled fully, checked against
the budget again (the resources measured on the shipped model.onnx) and shipped through the
usual stages. A tier's latency is
predicted on its nodes' device profiles (query.profile) and, for nodes without one, measured on
this machine (the same CPU as simulated nodes). Tiers that choose the same architecture share
its student. Each tier's bundle names the tier in its signed manifest, so a device of another
tier refuses it: `bundles/<tier>/` holds every tier's, `bundle/` the last tier's (results.json
"student" describes it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.compression.bundle import make_bundle
from fedge.compression.latency import Graph, LatencyModel, fit, graph_of
from fedge.compression.resources import Resources, measured
from fedge.core.budgets import Budget
from fedge.core.bundle_format import MODEL_FILE
from fedge.core.config import RunConfig
from fedge.core.ort import make_session, session_call, settled_latency_us
from fedge.core.partition import Federation
from fedge.core.profile import Profile
from fedge.pipeline.chain.teacher_source import KdSource
from fedge.pipeline.outputs.rows import TierRecord
from fedge.pipeline.ship.candidates import with_quant
from fedge.pipeline.ship.gate import gate_teacher
from fedge.pipeline.ship.job import Compressed, CompressionJob, compress_and_ship
from fedge.pipeline.ship.search import SearchConfig, SearchError, SearchResult, Trial, run_search

log = logging.getLogger("fedge")


def tier_of(partition: int | None, device_class: str, tiers: list[str]) -> str:
    """A node's tier: its device-class if that names a tier, else partition modulo the tiers."""
    if device_class in tiers:
        return device_class
    return tiers[(partition or 0) % len(tiers)]


ATTEMPTS = 3  # architectures distilled fully per tier before its budget is declared missed
Search = Callable[[RunConfig, KdSource, Federation, float, SearchConfig], SearchResult]
Timer = Callable[[bytes, np.ndarray], float]  # (model, one raw sample) -> p50 µs here


def timed_us(model: bytes, sample: np.ndarray) -> float:
    """p50 µs of one onnxruntime call on `sample`, timed as nodes time it when installing."""
    call = session_call(make_session(model), sample)
    return settled_latency_us({"model": call})["model"]


@dataclass(frozen=True)
class TierTools:
    """How tiers find students and time them here (tests pass known latencies)."""

    search: Search = run_search
    time_us: Timer = timed_us


MEASURED = TierTools()  # the real search, timed on this machine


@dataclass
class Tiers:
    """Every tier's record and bundle files, and the last tier's compression (results.json)."""

    last: Compressed
    records: list[TierRecord]
    bundles: dict[str, dict[str, bytes]]


def compress_tiers(
    job: CompressionJob,
    profiles: dict[str, list[Profile | None]] | None = None,
    tools: TierTools = MEASURED,
) -> Tiers:
    """One search, then each tier's most accurate student within its budget, signed.

    `profiles`: each tier's nodes' device profiles (None for a node without one, judged on
    this machine). A tier's latency is the slowest of its nodes'. Raises the quality gate's
    NotShippedError before the search, and SearchError when a tier's budget is missed by every
    trial, or by every architecture distilled fully for it (nothing is shipped to anyone).
    """
    budgets, fed = job.cfg.tier_budgets, job.fed
    public = job.with_settings(job.cfg.one_public_student())
    teacher_val, _ = gate_teacher(job.cfg, make_session(job.teacher_onnx), fed.server.val)
    config = SearchConfig(trials=job.cfg.search_trials, seed=job.cfg.seed)
    found = tools.search(public.cfg, job.source, fed, teacher_val, config)
    sample = fed.dataset.preprocessing.invert(fed.server.val.x[:1])  # what a device feeds
    made: dict[tuple[str, str], Compressed] = {}

    def shipped(trial: Trial) -> Compressed:
        pair = (trial.student, trial.as_trialled)
        if pair not in made:
            log.info("tiers: distilling %s (%s) fully", *pair)
            cfg = with_quant(public.cfg, trial.as_trialled, student=trial.student)
            made[pair] = compress_and_ship(public.with_settings(cfg))
        return made[pair]

    records, bundles = [], {}
    for name, budget in budgets.items():
        judge = Judge.of((profiles or {}).get(name, []), tools.time_us)
        judged = with_margin(budget, job.cfg.tier_latency_margin)
        trial, latency, used = _pick(name, judged, judge, found.trials, shipped, sample)
        done = shipped(trial)
        records.append(
            _record(name, budget, trial, latency, judge, done, used, job.cfg.tier_latency_margin)
        )
        bundles[name] = for_tier(done, name, job.key)
    log.info(
        "tiers: %s",
        "; ".join(
            f"{r.tier} ({Budget.from_json(r.budget).describe()}) -> {r.student}" for r in records
        ),
    )
    last = made[records[-1].student, records[-1].quant]
    return Tiers(last, records, bundles)


def with_margin(budget: Budget, margin: float) -> Budget:
    """The budget the server judges by: its latency limit divided by the margin (resources exact).

    A node times its own install on its own load; the server's figure (predicted on a profile or
    timed here) must leave that much headroom for the node's to stay within the budget.
    """
    if budget.latency_us is None:
        return budget
    return replace(budget, latency_us=budget.latency_us / margin, margin=margin)


def for_tier(done: Compressed, tier: str, key: Ed25519PrivateKey) -> dict[str, bytes]:
    """The student's bundle signed for one tier (tiers that share a student get one each).

    Its manifest names the tier, so a device of another tier refuses it.
    """
    shipment = done.shipment
    config = replace(shipment.manifest, tier=tier)
    return make_bundle(shipment.files[MODEL_FILE], config, key, shipment.artifacts())


def _pick(
    name: str,
    budget: Budget,
    judge: Judge,
    trials: list[Trial],
    shipped: Callable[[Trial], Compressed],
    sample: np.ndarray,
) -> tuple[Trial, float, Resources | None]:
    """The tier's trial whose fully distilled student meets the budget: it, latency, resources.

    The resources are exact (the shipped model.onnx, measured); the latency is the judge's.
    """
    fits = judge.within(trials, budget, name)
    distinct = list({(t.student, t.as_trialled): t for t in reversed(fits)}.values())
    distinct.reverse()  # one try per model: trials (spec, qdq refused) and (spec, fp32) are one
    tried = []
    for trial in distinct[:ATTEMPTS]:
        done = shipped(trial)  # the guard may keep or refuse int8 unlike in the trial
        model = done.shipment.files[MODEL_FILE]
        latency = judge.shipped_us(model, sample)
        used = measured(model, f"tier {name}'s student")  # None: a miss only under a limit
        arena, macs = (None, None) if used is None else (used.arena_bytes, used.macs)
        misses = budget.misses(
            None if budget.latency_us is None else latency, len(model), arena, macs
        )
        if not misses:
            return trial, latency, used
        tried.append(f"{trial.student} {trial.as_trialled}: {'; '.join(misses)}")
    raise SearchError(
        f"tier {name!r}: no architecture distilled fully met its budget ({budget.describe()}) "
        f"on {judge.where} ({' / '.join(tried)}). Nothing shipped; the trained teacher "
        "is kept: fedge simulate --resume RUN --tiers with other budgets"
    )


def _record(
    name: str,
    budget: Budget,
    trial: Trial,
    latency: float,
    judge: Judge,
    done: Compressed,
    used: Resources | None,
    margin: float,
) -> TierRecord:
    student = done.shipment.student
    return TierRecord(
        tier=name,
        budget_us=budget.latency_us,
        student=trial.student,
        quant=trial.as_trialled,
        search_trial=trial.to_json(),
        val_accuracy=done.chosen.row.val_accuracy,
        test_accuracy=student.accuracy,
        bytes=student.onnx_bytes,
        quantized=student.quantized,
        b1_us=student.latency_us.b1_p50,
        latency_us=latency,
        judged_on=judge.where,
        version=student.version,
        budget=budget.to_json(),
        latency_margin=margin,
        arena_bytes=None if used is None else used.arena_bytes,
        macs=None if used is None else used.macs,
    )


@dataclass(frozen=True)
class Judge:
    """How a tier's latency is judged: its nodes' profiles, and this machine for the others."""

    models: tuple[LatencyModel, ...]
    on_server: bool  # some node of the tier has no profile (or the tier has no nodes)
    where: str
    time_us: Timer = timed_us

    @classmethod
    def of(cls, profiles: list[Profile | None], time_us: Timer = timed_us) -> Judge:
        """The judge for a tier whose nodes have these profiles."""
        known = {json.dumps(p.latency_us, sort_keys=True): p for p in profiles if p is not None}
        on_server = not profiles or None in profiles
        names = sorted({p.name for p in known.values()}) + (["this machine"] if on_server else [])
        models = tuple(fit(p) for p in known.values())
        return cls(models, on_server, " and ".join(names), time_us)

    def trial_us(self, trial: Trial) -> float:
        """A search trial's batch-1 latency on the slowest of the tier's devices."""
        figures = [model.predict_us(Graph(**trial.graph), 1) for model in self.models]
        return max([*figures, *([trial.latency_us] if self.on_server else [])])

    def within(self, trials: list[Trial], budget: Budget, tier: str) -> list[Trial]:
        """The trials within `budget`, most accurate first; SearchError if there are none.

        The error names the closest trial: the one whose worst figure is the smallest
        multiple of its limit.
        """
        fits = [t for t in trials if not self.misses(t, budget)]
        if not fits:
            closest = min(trials, key=lambda t: self._excess(t, budget))
            raise SearchError(
                f"tier {tier!r}: no architecture of {len(trials)} tried meets its budget "
                f"({budget.describe()}) on {self.where}; the closest was {closest.student}: "
                f"{'; '.join(self.misses(closest, budget))}. Nothing shipped; the trained "
                "teacher is kept: fedge simulate --resume RUN --tiers with other budgets"
            )
        return sorted(fits, key=lambda t: (-t.val_accuracy, self.trial_us(t)))

    def misses(self, trial: Trial, budget: Budget) -> list[str]:
        """The limits of `budget` a search trial exceeds (its latency on the tier's devices)."""
        latency = None if budget.latency_us is None else self.trial_us(trial)
        return budget.misses(latency, trial.bytes, trial.arena_bytes, trial.macs)

    def _excess(self, trial: Trial, budget: Budget) -> float:
        """How far a trial is from fitting: its worst figure / limit."""
        latency = None if budget.latency_us is None else self.trial_us(trial)
        return budget.excess(latency, trial.bytes, trial.arena_bytes, trial.macs)

    def shipped_us(self, model: bytes, sample: np.ndarray) -> float:
        """The shipped model's p50 for its budget check: the slowest of the estimates.

        Its predictions on every profile and, for nodes without one, its time here.
        """
        graph = graph_of(model) if self.models else None
        figures = [m.predict_us(graph, 1) for m in self.models if graph is not None]
        if self.on_server:
            figures.append(self.time_us(model, sample))
        return max(figures)
