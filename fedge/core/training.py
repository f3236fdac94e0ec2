"""Pure torch train/evaluate functions shared by clients, the server and the compression stages."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


@dataclass(frozen=True)
class TrainResult:
    """What one local training call reports."""

    loss: float
    num_examples: int


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block with `count` torch threads, then restore the caller's setting.

    Float results of CPU kernels depend on how work is split between threads; compression pins
    one thread so that its bytes do not depend on the machine or the process it runs in.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def client_seed(run_seed: int, server_round: int, partition_id: int) -> int:
    """The seed of one client's local training in one round (the ClientApp and audit replays)."""
    return run_seed * 100_003 + server_round * 1_009 + partition_id


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """SGD with momentum on (x, y); with proximal_mu > 0 adds FedProx's term to the start point."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=generator)
        for start in range(0, len(yt), batch_size):
            batch = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(xt[batch]), yt[batch])
            if anchor:
                drift = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + proximal_mu / 2 * drift
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
    if not np.isfinite(total):
        raise FloatingPointError(f"local training diverged (loss {total}); lower lr={lr}")
    return TrainResult(loss=total / max(seen, 1), num_examples=len(yt))


MAX_GRAD_NORM = 5.0  # student rounds: gradient norm bound of each local SGD step


def kd_local_train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    teacher_logits: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    temperature: float,
    alpha: float,
    soft: bool,
) -> TrainResult:
    """Federated distillation on a client: alpha x KD to the teacher + (1 - alpha) x CE to labels.

    KD is Hinton's KL at `temperature` to the teacher's logits on these samples (`soft`), or
    cross-entropy to the teacher's top class. SGD with momentum, as local training.
    """
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    targets = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    total, seen = 0.0, 0
    t = temperature
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=generator)
        for start in range(0, len(yt), batch_size):
            batch = order[start : start + batch_size]
            logits = model(xt[batch])
            if soft:
                kd = F.kl_div(
                    F.log_softmax(logits / t, 1),
                    F.log_softmax(targets[batch] / t, 1),
                    log_target=True,
                    reduction="batchmean",
                ) * (t * t)
            else:
                kd = F.cross_entropy(logits, targets[batch].argmax(1))
            loss = alpha * kd + (1 - alpha) * F.cross_entropy(logits, yt[batch])
            optimizer.zero_grad()
            loss.backward()
            # A small model's KD loss (x T^2) can spike; clipping keeps SGD from diverging.
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
    model.eval()
    if not np.isfinite(total):
        raise FloatingPointError(f"student training diverged (loss {total}); lower student-lr={lr}")
    return TrainResult(loss=total / max(seen, 1), num_examples=len(yt))


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits for x in eval mode."""
    model.eval()
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    outs = [model(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
    return torch.cat(outs).numpy()


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(loss, accuracy in [0, 1])."""
    logits = torch.from_numpy(predict_logits(model, x))
    labels = torch.from_numpy(y)
    loss = float(F.cross_entropy(logits, labels))
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return loss, accuracy


def get_weights(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """State dict as numpy arrays, keyed by qualified parameter name."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in model.state_dict().items())


def set_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy arrays by name; names and shapes must match exactly."""
    expected = model.state_dict()
    if set(weights) != set(expected):
        raise ValueError(f"weight keys differ: got {sorted(weights)}, expected {sorted(expected)}")
    state = OrderedDict()
    for key, ref in expected.items():
        value = torch.from_numpy(np.asarray(weights[key]))
        if value.shape != ref.shape:
            raise ValueError(
                f"weight {key!r} has shape {tuple(value.shape)}, expected {tuple(ref.shape)}"
            )
        state[key] = value.to(ref.dtype)
    model.load_state_dict(state, strict=True)


def weights_sha256(weights: dict[str, np.ndarray]) -> str:
    """sha256 over every (name, dtype, shape, bytes) in order: equal hashes mean equal models."""
    digest = hashlib.sha256()
    for name, value in weights.items():
        array = np.ascontiguousarray(value)
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
