"""Pure torch train/evaluate functions shared by clients, the server and the compression stages."""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from fedge.core.augment import View


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


Batch = TypeVar("Batch")
BatchLoss = Callable[[Batch], "tuple[torch.Tensor, int] | None"]


@dataclass
class RunningLoss:
    """Per-sample losses summed over the batches seen so far."""

    total: float = 0.0
    seen: int = 0

    def add(self, loss: float, count: int) -> None:
        """Count one batch: its mean loss over `count` samples."""
        self.total += loss * count
        self.seen += count

    @property
    def mean(self) -> float:
        """The mean per-sample loss (0 before any batch)."""
        return self.total / max(self.seen, 1)


def shuffled_batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """One epoch's batches of sample indices: a permutation drawn from `generator`, sliced.

    The permutation is drawn when the first batch is asked for.
    """
    order = torch.randperm(count, generator=generator)
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def epochs_of_batches(
    count: int, batch_size: int, epochs: int, generator: torch.Generator, sample_budget: int = 0
) -> Iterator[Iterator[Tensor]]:
    """Each epoch's batches, stopping once `sample_budget` samples were drawn (0: every epoch).

    The epoch that reaches the budget is cut short; later epochs draw no permutation at all, so
    without a cap (or below it) the batches and the random draws are exactly the uncapped ones.
    """
    left = sample_budget or math.inf
    for _ in range(epochs):
        if left <= 0:
            return
        batches = math.ceil(min(left, count) / batch_size)
        left -= count
        yield itertools.islice(shuffled_batches(count, batch_size, generator), batches)


def sgd_epoch(
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    batch_loss: BatchLoss[Batch],
    running: RunningLoss,
    *,
    max_grad_norm: float | None = None,
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> RunningLoss:
    """One pass over `batches`: per batch, zero the gradients, its loss, backward, one step.

    The one epoch loop of local training, federated distillation, public-pool distillation
    and DP-SGD; only the loss differs between them.

    Parameters
    ----------
    optimizer
        Steps the model's parameters.
    batches
        What `batch_loss` takes: index tensors, or (x, y) from a DataLoader.
    batch_loss
        The batch's mean loss and its number of samples, or None for an empty batch (DP-SGD's
        Poisson sampling draws some), which takes no step.
    running
        Where each batch's loss is added (pass one across epochs for a run's mean).
    max_grad_norm
        Clip the gradients' total norm to this before each step.
    schedule
        A learning-rate schedule stepped after each optimizer step.

    Returns
    -------
    RunningLoss
        `running`, with this epoch's batches added.

    """
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    for batch in batches:
        optimizer.zero_grad()
        step = batch_loss(batch)
        if step is None:
            continue
        loss, count = step
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimizer.step()
        if schedule is not None:
            schedule.step()
        running.add(loss.item(), count)
    return running


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
    sample_budget: int = 0,
    view: View | None = None,
) -> TrainResult:
    """SGD with momentum on (x, y); with proximal_mu > 0 adds FedProx's term to the start point.

    `sample_budget` > 0: at most that many samples (epochs x samples, the last epoch cut short).
    `view`: a random view of each batch (fedge.core.augment), drawn from the same generator.
    """
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def batch_loss(batch: Tensor) -> tuple[Tensor, int]:
        inputs = xt[batch] if view is None else view(xt[batch], generator)
        loss = F.cross_entropy(model(inputs), yt[batch])
        if anchor:
            drift = sum(
                ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
            )
            loss = loss + proximal_mu / 2 * drift
        return loss, len(batch)

    model.train()
    running = RunningLoss()
    for batches in epochs_of_batches(len(yt), batch_size, epochs, generator, sample_budget):
        sgd_epoch(optimizer, batches, batch_loss, running)
    if not np.isfinite(running.total):
        raise FloatingPointError(f"local training diverged (loss {running.total}); lower lr={lr}")
    return TrainResult(loss=running.mean, num_examples=len(yt))


MAX_GRAD_NORM = 5.0  # student rounds: gradient norm bound of each local SGD step


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Hinton et al. 2015: KL(teacher_T || student_T) x T^2, from logits on both sides."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


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
    sample_budget: int = 0,
) -> TrainResult:
    """Federated distillation on a client: alpha x KD to the teacher + (1 - alpha) x CE to labels.

    KD is Hinton's KL at `temperature` to the teacher's logits on these samples (`soft`), or
    cross-entropy to the teacher's top class. SGD with momentum, as local training, within the
    same `sample_budget`.
    """
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    targets = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def batch_loss(batch: Tensor) -> tuple[Tensor, int]:
        loss = kd_objective(model(xt[batch]), yt[batch], targets[batch], temperature, alpha, soft)
        return loss, len(batch)

    model.train()
    running = RunningLoss()
    for batches in epochs_of_batches(len(yt), batch_size, epochs, generator, sample_budget):
        # A small model's KD loss (x T^2) can spike; clipping keeps SGD from diverging.
        sgd_epoch(optimizer, batches, batch_loss, running, max_grad_norm=MAX_GRAD_NORM)
    model.eval()
    if not np.isfinite(running.total):
        raise FloatingPointError(
            f"student training diverged (loss {running.total}); lower student-lr={lr}"
        )
    return TrainResult(loss=running.mean, num_examples=len(yt))


def kd_objective(
    logits: Tensor, labels: Tensor, teacher: Tensor, temperature: float, alpha: float, soft: bool
) -> Tensor:
    """Federated distillation's loss: alpha x KD to the teacher's logits + (1 - alpha) x CE.

    KD is Hinton's KL at `temperature` (`soft`), or cross-entropy to the teacher's top class.
    """
    kd = (
        kd_loss(logits, teacher, temperature)
        if soft
        else F.cross_entropy(logits, teacher.argmax(1))
    )
    return alpha * kd + (1 - alpha) * F.cross_entropy(logits, labels)


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
