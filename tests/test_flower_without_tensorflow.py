"""Flower's simulation engine is imported without TensorFlow, which stays importable after."""

import os
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


def test_ray_workers_run_the_same_import_first(monkeypatch):
    # fedge starts Ray itself; every worker runs the hook before any actor is unpickled.
    import importlib

    import ray

    from fedge.simulations import runner
    from fedge.simulations.flower_import import import_flower_simulation

    started: dict = {}
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # _start_ray extends it
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    runner._start_ray(None, verbose=False)
    module, name = started["runtime_env"]["worker_process_setup_hook"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is import_flower_simulation


def test_an_empty_ray_address_starts_a_ray_of_its_own_not_a_running_cluster(monkeypatch):
    # ray.init(address=None) joins the cluster a `ray start` left on this machine (or
    # RAY_ADDRESS's): an empty ray-address must not, a given one must.
    import ray

    from fedge.simulations import runner

    started: dict = {}
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: started.update(kwargs))
    runner._start_ray(None, verbose=False)
    assert started["address"] == "local"
    runner._start_ray("10.0.0.5:6380", verbose=False)
    assert started["address"] == "10.0.0.5:6380"
