"""Which teacher distillation learns from: the global model, or the clients' ensemble's logits."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fedge.compression.ensemble import LogitTable, average_logits
from fedge.core.config import ConfigError
from fedge.core.io import atomic_write_bytes
from fedge.core.partition import PublicPool
from fedge.core.training import predict_logits
from fedge.pipeline.outputs.rows import EnsembleSummary

log = logging.getLogger("fedge")
ENSEMBLE_FILE = "ensemble.npz"  # transfer inputs and averaged client logits, for fedge compress


@dataclass
class KdSource:
    """What the compression phase distills from, on which public inputs, with which settings."""

    teacher: nn.Module
    pool: PublicPool
    summary: EnsembleSummary  # results.json "ensemble"
    # A teacher that knows only a fixed transfer set of `fixed_views` x the pool (an ensemble's
    # logits): see CompressionConfig.on_fixed_views. None: a model, asked on the fly.
    fixed_views: int | None = None


def global_source(teacher: nn.Module, pool: PublicPool) -> KdSource:
    """Distill from the aggregated global model, augmenting the pool on the fly."""
    return KdSource(teacher, pool, EnsembleSummary("global"))


def from_client_logits(
    teacher: nn.Module,
    pool: PublicPool,
    *,
    transfer: PublicPool,
    per_client: list[tuple[int, np.ndarray]],
    failures: list[dict[str, Any]],
    query_bytes: int,
    views: int,
    run_dir: Path,
) -> KdSource:
    """FedDF-style: distill the mean of the clients' logits on the transfer set.

    `per_client` holds (partition, logits) of every client that answered. If none did (e.g. a
    run resumed after its last round: the nodes' models are gone), the global model is used and
    the summary says why. The transfer inputs and mean logits are saved for `fedge compress`.
    """
    if not per_client:
        reason = "; ".join(f["reason"] for f in failures[:3]) or "no node trained the last round"
        log.warning("ensemble: no client logits (%s); distilling from the global model", reason)
        return KdSource(
            teacher,
            pool,
            EnsembleSummary("global", requested="ensemble", reason=reason, failed=failures),
        )
    logits = average_logits([p[1] for p in per_client])
    buffer = io.BytesIO()
    np.savez(buffer, x=transfer.x, logits=logits)
    atomic_write_bytes(run_dir / ENSEMBLE_FILE, buffer.getvalue())
    agreement = float((predict_logits(teacher, transfer.x).argmax(1) == logits.argmax(1)).mean())
    log.info(
        "ensemble: %d clients labeled %d transfer inputs; agrees with the global model on %.1f %%",
        len(per_client),
        len(transfer),
        100 * agreement,
    )
    return KdSource(
        LogitTable(transfer.x, logits),
        transfer,
        EnsembleSummary(
            "ensemble",
            clients=sorted(p[0] for p in per_client),
            failed=failures,
            transfer_inputs=len(transfer),
            query_bytes=query_bytes,
            agreement_with_global=agreement,
        ),
        fixed_views=views,
    )


def stored_source(run_dir: Path, views: int) -> KdSource:
    """The ensemble a finished run saved (fedge compress); ConfigError if it saved none."""
    path = Path(run_dir) / ENSEMBLE_FILE
    if not path.is_file():
        raise ConfigError(
            f"teacher-mode ensemble needs {path}, which only a run with teacher-mode ensemble "
            "writes; allowed here: teacher-mode global"
        )
    with np.load(path, allow_pickle=False) as data:
        x, logits = data["x"], data["logits"]
    return KdSource(
        LogitTable(x, logits),
        PublicPool(x),
        EnsembleSummary("ensemble", transfer_inputs=len(x), saved_in=ENSEMBLE_FILE),
        fixed_views=views,
    )
