"""The one SGD epoch loop: the same bytes as the loops it replaced, empty batches, clipping, schedule."""

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fedge.core import training
from fedge.core.training import RunningLoss, sgd_epoch, shuffled_batches

RNG = np.random.default_rng(0)
X = RNG.normal(size=(70, 6)).astype(np.float32)
Y = RNG.integers(0, 3, size=70).astype(np.int64)
LOGITS = RNG.normal(size=(70, 3)).astype(np.float32)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def _written_out_train(model, *, epochs, lr, batch_size, seed, clip=None, kd=None):
    """Local training as an explicit loop (how train and kd_local_train were written)."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(X), torch.from_numpy(Y)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    total, seen = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=generator)
        for start in range(0, len(yt), batch_size):
            batch = order[start : start + batch_size]
            logits = model(xt[batch])
            loss = F.cross_entropy(logits, yt[batch])
            if kd is not None:
                teacher = torch.from_numpy(LOGITS)[batch]
                loss = 0.5 * training.kd_loss(logits, teacher, kd) + 0.5 * loss
            optimizer.zero_grad()
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
    return total / seen


def test_train_is_the_written_out_loop_bit_for_bit():
    ours, theirs = _model(), _model()
    result = training.train(ours, X, Y, epochs=3, lr=0.1, batch_size=16, seed=4)
    expected = _written_out_train(theirs, epochs=3, lr=0.1, batch_size=16, seed=4)
    assert _same(ours, theirs) and result.loss == expected and result.num_examples == 70


def test_kd_local_train_is_the_written_out_loop_bit_for_bit():
    ours, theirs = _model(), _model()
    result = training.kd_local_train(
        ours, X, Y, LOGITS, epochs=2, lr=0.5, batch_size=16, seed=9,
        temperature=3.0, alpha=0.5, soft=True,
    )  # fmt: skip
    expected = _written_out_train(
        theirs, epochs=2, lr=0.5, batch_size=16, seed=9, clip=training.MAX_GRAD_NORM, kd=3.0
    )
    assert _same(ours, theirs) and result.loss == expected


def test_an_empty_batch_takes_no_step_and_counts_nothing():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    xt = torch.from_numpy(X)
    calls = []

    def batch_loss(batch):
        calls.append(len(batch))
        return None if len(batch) == 0 else (model(xt[batch]).sum() * 0.0, len(batch))

    running = sgd_epoch(optimizer, [torch.arange(0)] * 3, batch_loss, RunningLoss())
    assert calls == [0, 0, 0] and running.seen == 0 and running.mean == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    running = sgd_epoch(optimizer, [torch.arange(0), torch.arange(5)], batch_loss, running)
    assert running.seen == 5 and calls[-2:] == [0, 5]


def test_the_schedule_steps_once_per_optimizer_step_and_clipping_bounds_the_step():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    xt, yt = torch.from_numpy(X), torch.from_numpy(Y)
    start = [p.detach().clone() for p in model.parameters()]

    def batch_loss(batch):
        return 1000.0 * F.cross_entropy(model(xt[batch]), yt[batch]), len(batch)

    batches = shuffled_batches(70, 35, torch.Generator().manual_seed(0))
    sgd_epoch(optimizer, batches, batch_loss, RunningLoss(), max_grad_norm=0.01, schedule=schedule)
    assert optimizer.param_groups[0]["lr"] == 0.25  # two steps
    moved = torch.cat(
        [(p.detach() - s).flatten() for p, s in zip(model.parameters(), start, strict=True)]
    )
    assert float(moved.norm()) <= 0.01 * (1.0 + 0.5) + 1e-6  # each step at most lr x max norm


def test_shuffled_batches_cover_every_sample_once_in_the_generator_s_order():
    batches = list(shuffled_batches(70, 16, torch.Generator().manual_seed(3)))
    assert [len(b) for b in batches] == [16, 16, 16, 16, 6]
    order = torch.randperm(70, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat(batches), order)


def test_a_sample_budget_cuts_the_epochs_short_and_changes_nothing_below_it():
    import torch

    from fedge.core.training import epochs_of_batches

    def drawn(budget: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(0)
        return [
            [int(i) for b in epoch for i in b]
            for epoch in epochs_of_batches(10, 4, 3, generator, budget)
        ]

    full = drawn(0)
    assert [len(e) for e in full] == [10, 10, 10]
    assert drawn(30) == full and drawn(1000) == full  # at or above epochs x samples: the same
    cut = drawn(14)  # one epoch, then the 4 samples of the next one's first batch
    assert cut == [full[0], full[1][:4]]
    assert [len(e) for e in drawn(5)] == [8]  # whole batches: 5 samples round up to two of 4
