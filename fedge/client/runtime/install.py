"""Install a delivered bundle and measure it where it runs: one verification, one session.

What the Flower deploy handler does with the bundle bytes it receives, without Flower or
torch: `install_and_load` verifies and installs them (`ModelStore.install`, which also runs
the device-model check in a limited child process) and serves the bundle it verified in a
Predictor, so the store is not read back and verified again; `accuracy` and
`install_latency_us` measure the installed model as the device will run it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedge.client.runtime.devicecheck import check_device_model
from fedge.client.runtime.predictor import Predictor
from fedge.client.runtime.store import DeviceCheck, ModelStore
from fedge.client.runtime.verify import BundleError, load_public_key
from fedge.core.ort import session_call, settled_latency_us

LatencyTimer = Callable[[dict[str, Callable[[], object]]], dict[str, float]]
"""Per-call p50 µs of each named zero-argument call (core.ort.settled_latency_us)."""


@dataclass(frozen=True)
class Deployed:
    """A bundle that is now the store's current one, loaded for serving."""

    predictor: Predictor  # serves the installed bundle (its one onnxruntime session)
    changed: bool  # False: this version was already current (a re-delivery)


def install_and_load(
    store: ModelStore,
    trusted_key: Path | str,
    files: dict[str, bytes],
    *,
    allow_model_switch: bool = False,
    device_check: DeviceCheck = check_device_model,
    tier: str = "",
    assigned: str = "",
    runtime: str = "onnx",
) -> Deployed:
    """Verify and install `files` in `store`, then serve the verified bundle.

    Parameters
    ----------
    store
        The node's model store.
    trusted_key
        The public key (PEM) bundles must be signed with.
    files
        The three bundle files by name, as delivered.
    allow_model_switch
        Accept a bundle of another model line than the installed one.
    device_check
        Loads and runs the model before it becomes current (a limited child process).
    tier, assigned, runtime
        This device's own tier, the one a server assigned it (`runtime.tiers.check_tier`), and
        what it runs: onnx, ort (model.ort) or tflite (model.tflite in LiteRT).

    Returns
    -------
    Deployed
        The Predictor on the bundle `ModelStore.install` verified (a re-delivery: on the
        installed copy, which the store verifies from disk), and whether the store changed.

    Raises
    ------
    BundleError
        The check that refused the bundle; the refusal is recorded in the store (an
        unreadable key too).

    """
    try:
        key = load_public_key(trusted_key)
    except BundleError as err:
        store.record_refusal(err, files)
        raise
    outcome = store.install(
        files,
        key,
        allow_model_switch=allow_model_switch,
        device_check=device_check,
        tier=tier,
        assigned=assigned,
        runtime=runtime,
    )
    predictor = Predictor.from_bundle(
        store, key, outcome.bundle, warmup=0, check_interval=None, runtime=runtime
    )
    return Deployed(predictor, outcome.changed)


def accuracy(predictor: Predictor, raw: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in [0, 1] of the served model on raw samples (the model preprocesses)."""
    return float((predictor.predict(raw).labels == labels).mean())


def install_latency_us(
    predictor: Predictor,
    sample: np.ndarray | None = None,
    *,
    timer: LatencyTimer = settled_latency_us,
) -> dict[str, float]:
    """Batch-1 p50 µs: the onnxruntime call ("onnx", as budgets count it) and "predict".

    Timed as the server checks a tier's student: blocks of consecutive calls, the best of
    three measurements half a second apart (`timer`). `sample` is one raw sample; without
    one (the node has no data to take it from) a zero sample of the model's shape.
    """
    one = np.zeros((1, *predictor.sample_shape), np.float32) if sample is None else sample
    calls: dict[str, Callable[[], object]] = {
        "onnx": session_call(predictor.session, predictor.model_input(one)),
        "predict": lambda: predictor.predict(one),
    }
    return timer(calls)
