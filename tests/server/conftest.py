"""Server tests run the real ClientApp in this process, as a simulated node would."""

import pytest

from fedge.client.node import SIMULATION_ENV


@pytest.fixture(autouse=True)
def simulated_nodes(monkeypatch):
    """The in-process nodes are a simulation's: they may trust the run's own key."""
    monkeypatch.setenv(SIMULATION_ENV, "1")
