"""Device-aware student search: Optuna explores architectures against accuracy, latency, bytes.

Each trial samples an architecture (fedge.core.archspec) for the data's shape, distils it briefly
from the teacher on the public pool and runs it through the run's own compression chain
(quantization guard, device ops, minify), so its bytes are what would ship. Latency is
predicted on the target device's profile (fedge.compression.latency) or, without a profile,
measured here. Optuna's multi-objective TPE sampler (Ozaki et al. 2022) proposes the next
trial; budgets (latency, flash, activation RAM, MACs: memory-aware as MCUNet's search) are its
constraints. The few most accurate trials within them (finalists) are distilled fully by the
caller, and the one most accurate on validation ships through the usual stages.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from fedge.compression import resources
from fedge.compression.energy import energy_model, estimate_uj
from fedge.compression.latency import LatencyModel, graph_of
from fedge.core import archspec
from fedge.core.budgets import Budget
from fedge.core.bundle_format import MODEL_FILE
from fedge.core.config import ConfigError, RunConfig
from fedge.core.partition import Federation
from fedge.pipeline.chain.teacher_source import KdSource
from fedge.pipeline.outputs.rows import CandidateRow
from fedge.pipeline.ship.candidates import compress_candidates, quant_name, with_quant
from fedge.pipeline.ship.search_space import sample, seed_specs
from fedge.pipeline.ship.shipping import Shipment

log = logging.getLogger("fedge")


class SearchError(ConfigError):
    """No architecture the search tried meets the budget (nothing is shipped)."""


@dataclass(frozen=True)
class SearchConfig:
    """What `fedge compress --search` asks for."""

    trials: int = 30
    time_budget_s: float = 480.0
    max_latency_us: float | None = None
    max_bytes: int | None = None
    max_ram_bytes: int | None = None  # the activation arena at batch 1 (memory-aware, MCUNet)
    max_macs: int | None = None
    trial_epochs: int = 25  # of the final's kd-epochs; a trial's share of its sample-steps too
    finalists: int = 3  # the most accurate trials within budget, distilled fully to choose
    model: LatencyModel | None = None  # the target device; None: measured on this machine
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if not self.time_budget_s > 0:
            raise ConfigError(f"--time-budget must be > 0 seconds, got {self.time_budget_s}")
        if self.max_latency_us is not None and not self.max_latency_us > 0:
            raise ConfigError(f"--max-latency-us must be > 0, got {self.max_latency_us}")
        for flag, value in (
            ("--max-bytes", self.max_bytes),
            ("--max-ram-bytes", self.max_ram_bytes),
            ("--max-macs", self.max_macs),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if self.finalists < 1:
            raise ConfigError(f"finalists must be >= 1, got {self.finalists}")
        if self.trial_epochs < 1:
            raise ConfigError(f"trial epochs must be >= 1, got {self.trial_epochs}")

    @property
    def budget(self) -> Budget:
        """The limits as a Budget (fedge.core.budgets): what trials and the shipped model meet."""
        return Budget(self.max_latency_us, self.max_bytes, self.max_ram_bytes, self.max_macs)

    @property
    def target(self) -> str:
        """Where latency is judged."""
        return f"profile {self.model.profile.name}" if self.model else "this machine (measured)"


@dataclass
class Trial:
    """One architecture the search tried, as its short distillation and the chain left it."""

    student: str  # the arch: spec
    quant: str  # asked for; `quantized`: whether the guard kept int8
    val_accuracy: float
    test_accuracy: float
    bytes: int
    params: int
    quantized: bool
    measured_b1_us: float  # this machine
    predicted_b1_us: float | None  # on the target's profile, if any
    latency_us: float  # what the budget is checked against (predicted, else measured)
    graph: dict[str, Any]  # compression.latency.Graph: to predict it on other profiles
    seconds: float
    macs: int | None = None  # the shipped graph at batch 1 (compression.resources)
    arena_bytes: int | None = None  # its peak activation memory at batch 1
    energy_uj: float | None = None  # an estimate per inference (compression.energy)
    trial: int = -1  # Optuna's trial number
    feasible: bool = False  # within every budget
    finalist: bool = False  # distilled fully after the search
    chosen: bool = False  # shipped

    @property
    def as_trialled(self) -> str:
        """The quantization to distil this architecture fully with: what its trial shipped.

        A trial whose guard refused int8 was timed in fp32; distilled fully, int8 might be kept
        and be slower at batch 1 than the budget the trial met.
        """
        return self.quant if self.quantized else "fp32"

    def to_json(self) -> dict[str, Any]:
        """The trial as trials.json and results.json hold it."""
        return asdict(self)


@dataclass
class SearchResult:
    """Every trial, the chosen architecture and how long it took."""

    trials: list[Trial] = field(default_factory=list)
    finalists: list[dict[str, str]] = field(default_factory=list)  # student, quant; best first
    chosen: str = ""  # the finalist that distilled best (set by `searched`)
    chosen_quant: str = ""
    seconds: float = 0.0

    def summary(self, search: SearchConfig) -> dict[str, Any]:
        """results.json "search"."""
        chosen = next(t for t in self.trials if t.chosen)
        return {
            "trials": len(self.trials),
            "seconds": self.seconds,
            "target": search.target,
            "max_latency_us": search.max_latency_us,
            "max_bytes": search.max_bytes,
            "max_ram_bytes": search.max_ram_bytes,
            "max_macs": search.max_macs,
            "energy_model": energy_model(search.model).source,
            "trial_epochs": search.trial_epochs,
            "finalists": self.finalists,
            "chosen": self.chosen,
            "chosen_quant": self.chosen_quant,
            "chosen_trial": chosen.to_json(),
        }


def run_search(
    cfg: RunConfig,
    source: KdSource,
    fed: Federation,
    teacher_val: float,
    config: SearchConfig,
) -> SearchResult:
    """Run the trials (at most `trials`, within `time_budget_s`); SearchError if none fits."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    shape = fed.dataset.preprocessing.input_shape
    result = SearchResult()
    started = time.monotonic()
    evaluated: dict[str, Trial] = {}
    quants = quant_choices(cfg)

    def objective(trial: Any) -> tuple[float, float, float]:
        spec = trial.user_attrs.get("spec") or sample(trial, shape)
        quant = trial.user_attrs.get("quant") or trial.suggest_categorical("quant", quants)
        key = f"{spec} {quant}"
        if key not in evaluated:
            try:
                evaluated[key] = _evaluate(cfg, source, fed, teacher_val, config, spec, quant)
            except ValueError as err:  # a layout these inputs cannot take: not a result
                log.info("trial %s skipped: %s", spec, err)
                raise optuna.TrialPruned(str(err)) from None
            evaluated[key].trial = trial.number
            result.trials.append(evaluated[key])
        row = evaluated[key]
        names = ("latency", "bytes", "ram", "macs")
        for name, value in zip(names, _violations(row, config), strict=True):
            trial.set_constraint(name, value)
        return row.val_accuracy, row.latency_us, float(row.bytes)

    sampler = optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=min(10, config.trials))
    study = optuna.create_study(directions=("maximize", "minimize", "minimize"), sampler=sampler)
    seeds = [spec for spec in seed_specs(shape) if archspec.fits(spec, shape)]
    for spec in seeds[: config.trials]:
        study.enqueue_trial({}, user_attrs={"spec": spec, "quant": quants[0]})
    study.optimize(objective, n_trials=config.trials, timeout=config.time_budget_s)
    result.seconds = time.monotonic() - started
    if not result.trials:
        raise SearchError(f"no architecture tried could take inputs of shape {shape}")
    _mark_finalists(result, config)
    log.info(
        "search: %d trials in %.0f s; finalists (distilled fully next): %s",
        len(result.trials),
        result.seconds,
        ", ".join(f"{f['student']} {f['quant']}" for f in result.finalists),
    )
    return result


def _mark_finalists(result: SearchResult, config: SearchConfig) -> None:
    """The most accurate trials within the budgets become finalists; SearchError if none fits."""
    fits = [t for t in result.trials if not any(v > 0 for v in _violations(t, config))]
    if not fits:
        fastest = min(result.trials, key=lambda t: t.latency_us)
        smallest = min(result.trials, key=lambda t: t.bytes)
        raise SearchError(
            f"no architecture of {len(result.trials)} tried meets the budget "
            f"({_budget(config)}); the fastest was {fastest.student} at "
            f"{fastest.latency_us:.1f} µs on {config.target}, the smallest "
            f"{smallest.student} at {smallest.bytes} bytes. Nothing shipped."
        )
    ranked = sorted(fits, key=lambda t: (-round(t.val_accuracy, 6), t.latency_us, t.bytes))
    pairs = dict.fromkeys((t.student, t.as_trialled) for t in ranked)  # best first, once
    result.finalists = [{"student": s, "quant": q} for s, q in pairs][: config.finalists]
    for row in result.trials:
        row.feasible = row in fits
        row.finalist = {"student": row.student, "quant": row.as_trialled} in result.finalists
        row.chosen = False


def _evaluate(
    cfg: RunConfig,
    source: KdSource,
    fed: Federation,
    teacher_val: float,
    config: SearchConfig,
    spec: str,
    quant: str,
) -> Trial:
    start = time.monotonic()
    trial_cfg = with_quant(trial_recipe(cfg, config.trial_epochs).replace(student=spec), quant)
    (candidate,) = compress_candidates(source, [trial_cfg], fed, teacher_val=teacher_val)
    row = candidate.row
    model_bytes = candidate.outcome.student_bytes
    graph = graph_of(model_bytes)
    predicted = config.model.predict_us(graph, 1) if config.model else None
    out = Trial(
        student=spec,
        quant=quant,
        val_accuracy=row.val_accuracy,
        test_accuracy=row.test_accuracy,
        bytes=row.bytes,
        params=row.params,
        quantized=row.quantized,
        measured_b1_us=row.b1_us,
        predicted_b1_us=predicted,
        latency_us=predicted if predicted is not None else row.b1_us,
        graph=asdict(graph),
        seconds=time.monotonic() - start,
        macs=row.resources.macs if row.resources else None,
        arena_bytes=row.resources.arena_bytes if row.resources else None,
        energy_uj=estimate_uj(row.resources, row.int8_kernels, config.model),
    )
    log.info(
        "trial %-40s %-5s validation %.4f  %6d bytes  %.1f µs",
        spec,
        quant,
        out.val_accuracy,
        out.bytes,
        out.latency_us,
    )
    return out


def trial_recipe(cfg: RunConfig, trial_epochs: int) -> RunConfig:
    """A trial's short distillation: `trial_epochs` of kd-epochs, and that share of the budget.

    Else a 25-epoch trial on Fashion-MNIST's 17,500-sample pool met kd-sample-budget as the
    final did (437,500 sample-steps to 500,000), and 8 minutes of search held 4 trials.
    """
    epochs = max(1, min(trial_epochs, cfg.kd_epochs))
    budget = cfg.kd_sample_budget
    if budget and cfg.kd_epochs:
        budget = max(1, budget * epochs // cfg.kd_epochs)
    return cfg.one_public_student().replace(kd_epochs=epochs, kd_sample_budget=budget, qat="off")


def quant_choices(cfg: RunConfig) -> list[str]:
    """The quantization a trial may take: the run's, or none (fp32).

    fp32 is often faster at batch 1 (this machine's profile: up to 2x): int8 adds quantize and
    dequantize steps to every call, and at batch 1 there is little arithmetic for it to save.
    """
    run = quant_name(cfg)
    return [run] if run == "fp32" else [run, "fp32"]


def _violations(row: Trial, config: SearchConfig) -> list[float]:
    """Optuna constraints: > 0 where a budget is exceeded."""
    return config.budget.overs(row.latency_us, row.bytes, row.arena_bytes, row.macs)


def _budget(config: SearchConfig) -> str:
    parts = []
    if config.max_latency_us:
        parts.append(f"max-latency-us {config.max_latency_us:g}")
    if config.max_bytes:
        parts.append(f"max-bytes {config.max_bytes}")
    if config.max_ram_bytes:
        parts.append(f"max-ram-bytes {config.max_ram_bytes}")
    if config.max_macs:
        parts.append(f"max-macs {config.max_macs}")
    return ", ".join(parts) or "none"


def searched(
    found: SearchResult,
    config: SearchConfig,
    shipment: Shipment,
    finalists: list[CandidateRow],
    chosen_quant: str,
) -> dict[str, Any]:
    """results.json "search": trials, finalists distilled fully, the shipped one vs the budget.

    SearchError if the shipped student misses a budget its trial met (int8 refused by the
    guard after full distillation ships fp32, which is larger and may be slower).
    """
    found.chosen, found.chosen_quant = shipment.manifest.architecture, chosen_quant
    for row in found.trials:
        row.chosen = (row.student, row.as_trialled) == (found.chosen, chosen_quant)
    model = shipment.files[MODEL_FILE]
    measured = shipment.student.latency_us.b1_p50
    predicted = config.model.predict_us(model, 1) if config.model else None
    latency = predicted or measured
    used = resources.measured(model, "the shipped student")  # None: a miss only under a limit
    arena, macs = (None, None) if used is None else (used.arena_bytes, used.macs)
    misses = config.budget.misses(latency, len(model), arena, macs)
    if misses:
        raise SearchError(
            f"the fully distilled {found.chosen} misses the budget ({_budget(config)}): "
            f"{'; '.join(misses)} (quantized: {shipment.student.quantized}). Nothing shipped."
        )
    shipped = {
        "bytes": len(model),
        "measured_b1_us": measured,
        "predicted_b1_us": predicted,
        "arena_bytes": arena,
        "macs": macs,
    }
    keep = ("student", "quant", "val_accuracy", "test_accuracy", "bytes", "b1_us")
    full = [{k: row.to_json()[k] for k in keep} for row in finalists]
    return {**found.summary(config), "finalists_distilled": full, "shipped": shipped}
