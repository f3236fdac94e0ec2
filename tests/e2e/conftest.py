"""Everything under tests/e2e starts real processes (a Ray simulation, SuperLink, the CLI): e2e."""

from pathlib import Path

import pytest

from tests.client.conftest import device, student_models  # noqa: F401  (device fixtures)
from tests.e2e.processes import TINY, fedge


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One uninterrupted tiny run, shared by every e2e test that reads a finished run."""
    tmp = tmp_path_factory.mktemp("tiny")
    proc = fedge("simulate", "--scenario", TINY, "--out", str(tmp / "run"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"
