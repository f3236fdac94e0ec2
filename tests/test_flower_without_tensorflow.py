"""Flower's simulation engine is imported without TensorFlow, which stays importable after."""

import subprocess
import sys

import pytest

CHECK = """
import sys
from fedge.simulations.flower_import import import_flower_simulation
import_flower_simulation()
from flwr.simulation.run_simulation import _run_simulation
print("tensorflow" in sys.modules)
import tensorflow
print(tensorflow.__name__)
"""


def test_the_engine_loads_without_tensorflow_and_leaves_it_importable():
    pytest.importorskip("tensorflow", reason="only an environment with TensorFlow can load it")
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "tensorflow"]


def test_ray_workers_run_the_same_import_first():
    from fedge.simulations import runner
    from fedge.simulations.flower_import import import_flower_simulation

    module, name = runner.WORKER_SETUP.rsplit(".", 1)
    assert f"{module}.{name}" == f"{import_flower_simulation.__module__}.{name}"
    assert name == import_flower_simulation.__name__
