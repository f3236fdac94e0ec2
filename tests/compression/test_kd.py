"""What the student is taught: which inputs the teacher answers, and with what labels."""

import numpy as np
import pytest
import torch
from torch import nn

from fedge.compression.kd import KDConfig, kd_train, soft_cross_entropy
from fedge.core.models import build_student


class Recording(nn.Module):
    """A teacher that remembers every input it was asked about."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher, self.seen = teacher, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.teacher(x)


def _train(teacher, pool, labels, queries):
    student = build_student((1, 8, 8), 10, "tiny", seed=0)
    kd = KDConfig(temperature=4.0, labels=labels, queries=queries, seed=0, batch_size=16)
    kd_train(student, teacher, pool, kd, epochs=2, lr=0.01)
    return student


@pytest.mark.parametrize("labels", ["soft", "hard"])
def test_pool_queries_ask_the_teacher_about_the_pool_samples_only(teacher, digits_fed, labels):
    pool = digits_fed.server.public_pool.x[:40]
    asked = Recording(teacher)
    _train(asked, pool, labels=labels, queries="pool")
    seen = torch.cat(asked.seen).numpy()
    assert len(asked.seen) == 1 and np.array_equal(seen, pool)  # once, exactly the samples
    on_the_fly = Recording(teacher)
    _train(on_the_fly, pool, labels=labels, queries="augmented")
    views = torch.cat(on_the_fly.seen).numpy().reshape(-1, 64)
    in_pool = {row.tobytes() for row in pool.reshape(-1, 64)}
    assert sum(row.tobytes() not in in_pool for row in views) == len(views)  # every view is new


def test_hard_labels_teach_only_the_top_class(teacher, digits_fed):
    """Differential: a teacher and a 10x softer copy agree on every top class; hard labels
    cannot tell them apart, soft labels can."""
    pool = digits_fed.server.public_pool.x[:64]

    class Softer(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return teacher(x) / 10

    def weights(model):
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    for queries in ("pool", "augmented"):
        hard = [_train(t, pool, labels="hard", queries=queries) for t in (teacher, Softer())]
        soft = [_train(t, pool, labels="soft", queries=queries) for t in (teacher, Softer())]
        assert torch.equal(weights(hard[0]), weights(hard[1]))
        assert not torch.allclose(weights(soft[0]), weights(soft[1]))


def test_soft_cross_entropy_on_one_hot_targets_is_cross_entropy():
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    one_hot = nn.functional.one_hot(labels, 10).float()
    expected = nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(soft_cross_entropy(logits, one_hot, 1.0), expected)


def test_a_sample_budget_caps_the_epochs_of_a_large_pool(teacher, digits_fed):
    """Differential: 10 epochs under a budget of 3 epochs' samples = 3 epochs without one."""
    pool = digits_fed.server.public_pool.x[:40]

    def train(epochs: int, budget: int) -> torch.Tensor:
        student = build_student((1, 8, 8), 10, "tiny", seed=0)
        kd = KDConfig(temperature=4.0, labels="hard", queries="pool", seed=0, sample_budget=budget)
        kd_train(student, teacher, pool, kd, epochs=epochs, lr=0.01)
        return torch.cat([p.detach().flatten() for p in student.parameters()])

    assert torch.equal(train(10, budget=3 * 40), train(3, budget=0))
    assert torch.equal(train(3, budget=1000), train(3, budget=0))  # within the budget: as asked
    assert not torch.equal(train(10, budget=0), train(3, budget=0))
