"""The deploy query on a node: install the delivered bundle first, then evaluate it on local data.

The install does not wait for the node's data: a node whose data cannot be loaded (a missing
data file, a federation of another size) still installs a good bundle, and its reply says
installed, with the data problem as the reason and no accuracy. The reply's keys are those
the server reads (`fedge.server.deploy`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedge.client.node import DeployTarget
from fedge.client.runtime.devicecheck import check_device_model
from fedge.client.runtime.install import (
    Deployed,
    LatencyTimer,
    accuracy,
    install_and_load,
    install_latency_us,
)
from fedge.client.runtime.store import DeviceCheck, ModelStore
from fedge.client.runtime.verify import BundleError
from fedge.core import messages as m
from fedge.core.ort import settled_latency_us
from fedge.core.records import as_bytes

TestData = Callable[[], tuple[np.ndarray, np.ndarray]]
"""The node's raw test samples and their labels, loaded when called."""


@dataclass(frozen=True)
class DeployVerdict:
    """What a node answers to a deploy: the metrics the server reads and the reason."""

    metrics: dict[str, int | float]
    reason: str

    def reply(self, msg: Message) -> Message:
        """The deploy reply."""
        content = RecordDict(
            {
                m.METRICS: MetricRecord(dict(self.metrics)),
                m.STATUS: ConfigRecord({m.REASON: self.reason}),
            }
        )
        return Message(content, reply_to=msg)


def bundle_files(config: Mapping[str, Any]) -> dict[str, bytes]:
    """The bundle files a deploy message carries, by file name (missing ones absent)."""
    return {
        name: as_bytes(config[key]) for name, key in m.BUNDLE_FILE_KEYS.items() if key in config
    }


def install(
    target: DeployTarget, files: dict[str, bytes], *, device_check: DeviceCheck = check_device_model
) -> Deployed:
    """Install in the node's store under its trusted key; BundleError when it cannot or may not.

    A node that trusts no key, or has no store, refuses every bundle ("trust"); the refusal is
    recorded in its store when it has one, as the store records every other refusal.
    """
    if target.refusal is not None or target.store is None or target.trusted_key is None:
        err = BundleError("trust", target.refusal or "no store or key")
        if target.store is not None:
            ModelStore(target.store).record_refusal(err, files)
        raise err
    return install_and_load(
        ModelStore(target.store),
        target.trusted_key,
        files,
        allow_model_switch=target.allow_model_switch,
        device_check=device_check,
        tier=target.tier,
        assigned=target.assigned,
        runtime=target.runtime,
    )


def install_then_evaluate(
    files: dict[str, bytes],
    target: DeployTarget,
    partition_id: int,
    test_data: TestData,
    *,
    device_check: DeviceCheck = check_device_model,
    timer: LatencyTimer | None = settled_latency_us,
) -> DeployVerdict:
    """Install the bundle, then load the node's test data and evaluate what was installed.

    Parameters
    ----------
    files
        The delivered bundle files by name.
    target
        The node's store and trusted key (`fedge.client.node.deploy_target`).
    partition_id
        The node's partition, echoed in the reply.
    test_data
        Loads the node's raw test samples and labels; called after the install.
    device_check, timer
        The device-model check and the latency timer (None: the model is not timed).

    Returns
    -------
    DeployVerdict
        installed 1 with accuracy, latency and version, or 0 with the refusal as the reason;
        a data problem is added to the reason, with accuracy NaN and num-examples 0.

    """
    metrics: dict[str, int | float] = {m.PARTITION_ID: partition_id, m.INSTALLED: 0}
    deployed: Deployed | None = None
    try:
        deployed = install(target, files, device_check=device_check)
    except BundleError as err:
        reason = str(err)
    else:
        version = deployed.predictor.version
        reason = "installed" if deployed.changed else f"version {version} was already installed"
    try:
        raw, labels = test_data()
        metrics[m.NUM_EXAMPLES] = len(labels)
        if deployed is not None:
            metrics.update(_measured(deployed, raw, labels, timer))
    except Exception as err:  # the node's data: whatever it does, the install stands
        metrics[m.NUM_EXAMPLES] = 0
        if deployed is not None:
            metrics.update(_measured(deployed, None, None, timer))
        text = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        reason = f"{reason}; not evaluated: {text}"
    return DeployVerdict(metrics, reason)


def _measured(
    deployed: Deployed,
    raw: np.ndarray | None,
    labels: np.ndarray | None,
    timer: LatencyTimer | None,
) -> dict[str, int | float]:
    """An installed bundle's figures: accuracy (NaN without data), latency, version."""
    predictor = deployed.predictor
    score = math.nan if raw is None or labels is None else accuracy(predictor, raw, labels)
    figures: dict[str, int | float] = {m.INSTALLED: 1, m.ACCURACY: score}
    if timer is not None:
        latency = install_latency_us(predictor, None if raw is None else raw[:1], timer=timer)
        figures.update({m.LATENCY_US_P50: latency["predict"], m.ONNX_US_P50: latency["onnx"]})
    return {**figures, "version": predictor.version}


def install_timer(setting: str) -> LatencyTimer | None:
    """The timer the install-timing setting names (None: off; auto is settled on a node)."""
    if setting == "off":
        return None
    return functools.partial(settled_latency_us, tries=1 if setting == "once" else 3)
