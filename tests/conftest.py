"""Shared fixtures: a small federation and a quickly trained teacher on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedge.core.config import RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import Federation, build_federation
from fedge.core.training import train

torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A slow test (a whole federation through the full chain) runs with the e2e tests.

    Those (and everything under tests/e2e/) run first: pytest-xdist's workers take one test at
    a time from the front (pyproject's addopts), so the minute-long process tests start at once
    on both workers and the second-long ones fill the end, instead of one long test last.
    """
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: not _heavy(item))  # stable: the order within each part stays


def _heavy(item: pytest.Item) -> bool:
    return (
        "tests/e2e/" in item.nodeid.replace("\\", "/") or item.get_closest_marker("e2e") is not None
    )


@pytest.fixture(scope="session")
def digits_cfg() -> RunConfig:
    return RunConfig(dataset="digits", clients=4, partition="iid", seed=0)


@pytest.fixture(scope="session")
def digits_fed(digits_cfg: RunConfig) -> Federation:
    return build_federation(digits_cfg)


@pytest.fixture(scope="session")
def teacher(digits_fed: Federation) -> torch.nn.Module:
    """A teacher trained centrally on the client pool (fast; compression tests only need a good one)."""
    model = build_teacher((1, 8, 8), 10, seed=0)
    train(model, digits_fed.client_x, digits_fed.client_y, epochs=8, lr=0.05, batch_size=32, seed=0)
    return model.eval()


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
