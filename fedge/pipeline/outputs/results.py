"""A run's results.json, report.md and plot, from what training, compression and deployment gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedge.core.config import RunConfig
from fedge.core.faults import byzantine_partitions, straggler_delay
from fedge.core.io import atomic_write_bytes, atomic_write_json
from fedge.core.sampling import poisson, sample_rate, samples_clients, train_size
from fedge.pipeline.outputs.plots import accuracy_plot
from fedge.pipeline.outputs.report import render_report
from fedge.pipeline.rundir.checkpoint import TrainingLog
from fedge.pipeline.rundir.paths import PLOT_FILE, REPORT_FILE, RESULTS_FILE
from fedge.privacy import ledger


def run_results(
    cfg: RunConfig,
    *,
    model_id: str,
    training: TrainingLog,
    final_sha256: str,
    teacher_params: int,
    compression: dict[str, Any],
    clients: list[dict[str, Any]],
    deploy_bytes: int,
    timing: dict[str, float],
) -> dict[str, Any]:
    """The results.json of one `fedge simulate` / ServerApp run."""
    return {
        "run_id": model_id,
        "config": cfg.to_run_config(),
        **compression,  # compression_config, ensemble, stages, choice, student_rounds, student
        "rounds": training.rounds,
        "rejected": training.rejected,
        "faults": faults_summary(cfg),
        "sampling": sampling_summary(cfg),
        "privacy": ledger.summary(cfg, training.rounds),
        "resumed_from": training.resumed_from,
        "final_model_sha256": final_sha256,
        "teacher": {**compression["teacher"], "params": teacher_params},
        "clients": clients,
        "communication": {
            "train_bytes": training.train_bytes,  # serialized messages, both ways
            "train_uplink_bytes": sum(r.get("uplink_bytes", 0) for r in training.rounds),
            "train_downlink_bytes": sum(r.get("downlink_bytes", 0) for r in training.rounds),
            "update_compression": cfg.update_compression,
            "downlink_compression": cfg.downlink_compression,
            "student_train_bytes": (compression["student_rounds"] or {}).get("train_bytes", 0),
            "deploy_bytes": deploy_bytes,
        },
        "timing_s": timing,
    }


def write_run_outputs(results: dict[str, Any], run_dir: Path) -> None:
    """results.json, report.md and accuracy.png, each written atomically."""
    atomic_write_json(run_dir / RESULTS_FILE, results)
    atomic_write_bytes(run_dir / REPORT_FILE, render_report(results).encode())
    atomic_write_bytes(run_dir / PLOT_FILE, accuracy_plot(results))


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
