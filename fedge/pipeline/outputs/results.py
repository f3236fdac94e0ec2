"""A run's results.json, report.md and plot, from what training, compression and deployment gave."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedge.core.config import RunConfig
from fedge.core.faults import byzantine_partitions, straggler_delay
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.plain import from_plain
from fedge.core.sampling import poisson, sample_rate, samples_clients, train_size
from fedge.pipeline.outputs.plots import accuracy_plot
from fedge.pipeline.outputs.report import render_compression_report, render_report
from fedge.pipeline.outputs.rows import (
    ClientRow,
    CompressionRecord,
    Deployment,
    Row,
    StudentFigures,
    TeacherFigures,
    TierRecord,
    TierSummary,
)
from fedge.pipeline.rundir.checkpoint import TrainingLog
from fedge.pipeline.rundir.paths import PLOT_FILE, REPORT_FILE, RESULTS_FILE
from fedge.privacy import ledger
from fedge.privacy.ledger import Release

NOT_CONNECTED = "not connected at deploy time"  # a client row's reason (server.deploy)
COMPRESSION_KEYS = tuple(f.name for f in dataclasses.fields(CompressionRecord))


@dataclass(frozen=True)
class RunResults(Row):
    """results.json of one `fedge simulate` / ServerApp run (compression's keys at the top)."""

    run_id: str
    config: dict[str, Any]
    compression: CompressionRecord  # its teacher figures include the teacher's params
    rounds: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    faults: dict[str, Any]
    sampling: dict[str, Any]
    privacy: dict[str, Any]
    resumed_from: list[int]
    final_model_sha256: str
    clients: tuple[ClientRow, ...]
    communication: dict[str, Any]
    timing_s: dict[str, float]
    tiers: tuple[TierSummary, ...] | None = None  # device tiers only
    deployment: Deployment | None = None  # None: nothing was shipped

    @property
    def teacher(self) -> TeacherFigures:
        """The federated teacher's figures."""
        return self.compression.teacher

    @property
    def student(self) -> StudentFigures | None:
        """The shipped student's figures (None: the quality gate stopped it)."""
        return self.compression.student

    def to_json(self) -> dict[str, Any]:
        """results.json: compression's record flattened into the top level."""
        out = super().to_json()
        out = {
            "run_id": out.pop("run_id"),
            "config": out.pop("config"),
            **out.pop("compression"),
            **out,
        }
        if self.tiers is None:
            del out["tiers"]
        return out

    @classmethod
    def from_json(cls, data: Any) -> RunResults:
        """Inverse of to_json; ValueError naming the first missing or malformed field."""
        if not isinstance(data, dict):
            raise ValueError("results.json is not an object")
        rest = {k: v for k, v in data.items() if k not in COMPRESSION_KEYS}
        record = {k: data.get(k) for k in COMPRESSION_KEYS}
        return from_plain(cls, {**rest, "compression": record}, "results.json")


@dataclass(frozen=True)
class CompressResults(Row):
    """results.json of `fedge compress`: a new compression of a finished run's teacher."""

    run_id: str
    source_run: str
    config: dict[str, Any]
    compression: CompressionRecord
    privacy: dict[str, Any] | None  # post-processing of the same teacher: its guarantee holds
    timing_s: dict[str, float]
    search: dict[str, Any] | None = None  # --search: trials, finalists, the shipped one

    @property
    def student(self) -> StudentFigures:
        """The shipped student's figures (fedge compress ships or raises)."""
        assert self.compression.student is not None
        return self.compression.student

    def to_json(self) -> dict[str, Any]:
        """results.json: compression's record flattened into the top level."""
        out = super().to_json()
        return {**{k: out[k] for k in ("run_id", "source_run", "config")}, **out["compression"]} | {
            k: out[k] for k in ("privacy", "timing_s", "search")
        }


def run_results(
    cfg: RunConfig,
    *,
    model_id: str,
    training: TrainingLog,
    final_sha256: str,
    teacher_params: int,
    compression: CompressionRecord,
    clients: list[ClientRow],
    deploy_bytes: int,
    timing: dict[str, float],
    tiers: list[TierRecord] | None = None,
    student_releases: list[Release] | None = None,
) -> RunResults:
    """The results of one `fedge simulate` / ServerApp run.

    `student_releases`: each student's federated rounds as they ran (the privacy ledger's);
    none recorded (a resumed compression): the chosen student's rounds from its record.
    """
    teacher = dataclasses.replace(compression.teacher, params=teacher_params)
    rounds = compression.student_rounds
    if not student_releases and rounds is not None and rounds.replayed_from is None:
        student_releases = [("student rounds", rounds.rounds)]
    return RunResults(
        run_id=model_id,
        config=cfg.to_run_config(),
        compression=dataclasses.replace(compression, teacher=teacher),
        rounds=training.rounds,
        rejected=training.rejected,
        faults=faults_summary(cfg),
        sampling=sampling_summary(cfg),
        privacy=ledger.summary(cfg, training.rounds, student_releases),
        resumed_from=training.resumed_from,
        final_model_sha256=final_sha256,
        clients=tuple(clients),
        communication={
            "train_bytes": training.train_bytes,  # serialized messages, both ways
            "train_uplink_bytes": sum(r.get("uplink_bytes", 0) for r in training.rounds),
            "train_downlink_bytes": sum(r.get("downlink_bytes", 0) for r in training.rounds),
            "update_compression": cfg.update_compression,
            "downlink_compression": cfg.downlink_compression,
            "student_train_bytes": rounds.train_bytes if rounds is not None else 0,
            "deploy_bytes": deploy_bytes,
        },
        timing_s=timing,
        tiers=tuple(tier_summary(tiers, clients)) if tiers else None,
        deployment=deployment(cfg, clients) if compression.shipped else None,
    )


def deployment(cfg: RunConfig, clients: list[ClientRow]) -> Deployment:
    """Whether enough clients installed the bundle (min-installed; 0: every reachable one)."""
    reachable = [c for c in clients if c.reason != NOT_CONNECTED]
    installed = sum(c.installed for c in clients)
    required = cfg.min_installed or len(reachable)
    timed = sum(c.installed and c.latency_us_p50 is not None for c in clients)
    return Deployment(installed, len(reachable), required, installed >= required, timed)


def write_run_outputs(results: RunResults, run_dir: Path) -> None:
    """results.json, report.md and accuracy.png, each written atomically."""
    data = results.to_json()
    atomic_write_json(run_dir / RESULTS_FILE, data)
    atomic_write_bytes(run_dir / REPORT_FILE, render_report(results).encode())
    atomic_write_bytes(run_dir / PLOT_FILE, accuracy_plot(results))


def write_compress_outputs(results: CompressResults, out: Path) -> None:
    """results.json and report.md of `fedge compress`, each written atomically."""
    atomic_write_json(out / RESULTS_FILE, results.to_json())
    atomic_write_bytes(out / REPORT_FILE, render_compression_report(results).encode())


def tier_summary(records: list[TierRecord], clients: list[ClientRow]) -> list[TierSummary]:
    """Each tier's student and what its nodes measured when installing."""
    out = []
    for record in records:
        nodes = [c for c in clients if c.tier == record.tier]
        latency = [c.onnx_us_p50 for c in nodes if c.onnx_us_p50 is not None]
        predict = [c.latency_us_p50 for c in nodes if c.latency_us_p50 is not None]
        fields = {k: v for k, v in record.to_json().items() if k != "search_trial"}
        out.append(
            TierSummary(
                **fields,
                nodes=len(nodes),
                installed=sum(c.installed for c in nodes),
                node_latency_us_max=max(latency) if latency else None,
                node_latency_us_median=float(np.median(latency)) if latency else None,
                node_predict_us_max=max(predict) if predict else None,
                meets_budget_on_nodes=_within_on_nodes(record, nodes, latency),
            )
        )
    return out


def _within_on_nodes(record: TierRecord, nodes: list[ClientRow], latency: list[float]) -> bool:
    """Every node of the tier installed its bundle and, under a latency limit, timed it within.

    The resource limits were checked exactly on the shipped model before it was sent.
    """
    if not nodes or not all(c.installed for c in nodes):
        return False
    if record.budget_us is None:
        return True
    return len(latency) == len(nodes) and max(latency) <= record.budget_us


def sampling_summary(cfg: RunConfig) -> dict[str, Any]:
    """How clients were sampled per round (each round's partitions are in rounds[].sampled)."""
    mode = "poisson" if poisson(cfg) else "fixed" if samples_clients(cfg) else "all"
    return {
        "mode": mode,
        "fraction_train": cfg.fraction_train,
        "clients_per_round": train_size(cfg),  # expected, under Poisson sampling
        "sample_rate": sample_rate(cfg),
        "fraction_evaluate": cfg.fraction_evaluate,
    }


def faults_summary(cfg: RunConfig) -> dict[str, Any]:
    """The injected faults and the defences, as configured (per-round roles are in rounds[])."""
    return {
        "aggregation": cfg.aggregation,
        "norm_outlier_factor": cfg.norm_outlier_factor,
        "min_clients": cfg.min_clients,
        "byzantine_mode": cfg.byzantine_mode if cfg.byzantine_fraction else None,
        "byzantine_partitions": sorted(byzantine_partitions(cfg)),
        "byzantine_scale": cfg.byzantine_scale,
        "dropout_fraction": cfg.dropout_fraction,
        "straggler_fraction": cfg.straggler_fraction,
        "straggler_delay_s": straggler_delay(cfg) if cfg.straggler_fraction else None,
    }
