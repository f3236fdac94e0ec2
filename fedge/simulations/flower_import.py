"""Flower's simulation engine imported without TensorFlow (which it loads, when installed, at import)."""

from __future__ import annotations

import importlib
import sys

FLOWER_TF_MODULE = "flwr.simulation.ray_transport.utils"


def import_flower_simulation() -> None:
    """Import Flower's simulation engine with `import tensorflow` failing, once per process.

    flwr/simulation/ray_transport/utils.py imports all of TensorFlow when it is installed (the
    litert extra brings it), only for a deprecated GPU-memory option fedge never sets: in the
    driver and in every Ray actor that was about 700 MB of resident memory and seconds of
    start-up each. TensorFlow stays importable afterwards (the tflite target needs it). Ray
    runs this in each worker before any actor starts (runtime_env worker_process_setup_hook).
    """
    if FLOWER_TF_MODULE in sys.modules:
        return
    missing = object()
    saved = sys.modules.get("tensorflow", missing)
    sys.modules["tensorflow"] = None  # type: ignore[assignment]  # import raises ModuleNotFoundError
    try:
        importlib.import_module(FLOWER_TF_MODULE)
    finally:
        if saved is missing:
            del sys.modules["tensorflow"]
        else:
            sys.modules["tensorflow"] = saved  # type: ignore[assignment]
