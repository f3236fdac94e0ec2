"""Ensemble distillation (FedDF-style): a fixed transfer set and the clients' averaged logits on it."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedge.compression.distill import require_public_pool
from fedge.compression.kd import augment
from fedge.core.partition import PublicPool


def transfer_set(
    public_pool: PublicPool, views: int, *, seed: int, mixup: float, noise: float, shift: int
) -> PublicPool:
    """The pool itself followed by `views - 1` augmented views of it (still public, unlabeled).

    Clients can only label inputs they are sent, so the augmentation distillation does on the
    fly with a model teacher is done once, here, before the query.
    """
    require_public_pool(public_pool)
    if views < 1:
        raise ValueError(f"ensemble-views must be >= 1, got {views}")
    generator = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(np.ascontiguousarray(public_pool.x, dtype=np.float32))
    parts = [xs] + [augment(xs, generator, mixup, noise, shift) for _ in range(views - 1)]
    return PublicPool(torch.cat(parts).numpy())


class LogitTable(nn.Module):
    """A teacher that knows only its table: the averaged client logits of each transfer input.

    Distillation from it must not augment (an unseen input has no logits): forward raises
    KeyError for any input not in the table.
    """

    def __init__(self, inputs: np.ndarray, logits: np.ndarray) -> None:
        super().__init__()
        if len(inputs) != len(logits):
            raise ValueError(f"{len(inputs)} inputs but {len(logits)} logit rows")
        rows = np.ascontiguousarray(inputs, dtype=np.float32).reshape(len(inputs), -1)
        self._index = {row.tobytes(): i for i, row in enumerate(rows)}
        self._logits = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The table's logits for each row of `x`."""
        rows = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        try:
            index = [self._index[row.tobytes()] for row in rows.reshape(len(rows), -1)]
        except KeyError:
            raise KeyError(
                "input not in the ensemble's transfer set (distillation from client logits "
                "cannot augment on the fly)"
            ) from None
        return self._logits[index]


def average_logits(per_client: list[np.ndarray]) -> np.ndarray:
    """FedDF's teacher: the plain mean of the clients' logits (one array of shape (N, C) each)."""
    if not per_client:
        raise ValueError("no client logits to average")
    return np.mean(np.stack(per_client), axis=0).astype(np.float32)
