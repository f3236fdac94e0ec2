"""Everything under tests/e2e starts real processes (a Ray simulation, SuperLink, the CLI): e2e."""

import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

from tests.client.conftest import device, student_models  # noqa: F401  (device fixtures)
from tests.e2e.processes import TINY, fedge


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One uninterrupted tiny run, shared by every e2e test that reads a finished run.

    Under pytest-xdist the workers share one run: the first to need it makes it while holding
    a lock in the session's common temp directory, the others wait and read it (or its failure).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process
        return _tiny(tmp_path_factory.mktemp("tiny"))
    shared = tmp_path_factory.getbasetemp().parent / "tiny"
    with FileLock(f"{shared}.lock"):
        failed = shared / "failed.json"
        if failed.is_file():
            pytest.fail(json.loads(failed.read_text()))
        if not (shared / "run" / "results.json").is_file():
            shared.mkdir(exist_ok=True)
            try:
                _tiny(shared)
            except Exception as err:  # a failed run or a hang: the other workers say the same
                failed.write_text(json.dumps(f"the shared tiny run: {type(err).__name__}: {err}"))
                raise
    return shared / "run"


def _tiny(tmp: Path) -> Path:
    proc = fedge("simulate", "--scenario", TINY, "--out", str(tmp / "run"), cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run"
