"""Where a node installs bundles and which key it trusts: its own node config, or the simulation's.

A real node trusts only what its operator configured (`trusted-key`, `model-store` in its
node config). A key path or store root that arrives in a message is used only when the node
knows it is simulated, and it learns that from its own process environment, which a remote
server cannot set: `fedge simulate` (or whoever starts Flower's simulation engine) sets
SIMULATION_ENV=1 before the engine starts, and the Ray workers that run the ClientApps inherit
it. Flower itself gives a simulated ClientApp nothing a real node could not also have: its
node_config is just partition-id and num-partitions, which a SuperNode operator can set too.
Outside simulation, a node without its own trusted-key refuses every bundle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.core import messages as m
from fedge.core.bundle_format import RUNTIMES

SIMULATION_ENV = m.SIMULATION_ENV
STORE_LAYOUT = ("partition-{pid}", "model-store")  # a simulated node's store under the root


@dataclass(frozen=True)
class DeployTarget:
    """Where this node installs a bundle and which key it trusts, or why it trusts none."""

    store: Path | None
    trusted_key: Path | None
    allow_model_switch: bool = False
    refusal: str | None = None  # set when the node must refuse every bundle
    tier: str = ""  # the node's own device tier (device-class): only its bundles ("": any)
    assigned: str = ""  # the tier the deploy message says the server assigned it
    runtime: str = "onnx"  # what the node runs (node config `runtime`): onnx, ort or tflite


def is_simulated(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process belongs to a local simulation (SIMULATION_ENV is "1")."""
    return (os.environ if environ is None else environ).get(SIMULATION_ENV) == "1"


def simulated_store(root: Path | str, partition_id: int) -> Path:
    """A simulated node's model store under the simulation's store root."""
    first, second = STORE_LAYOUT
    return Path(root) / first.format(pid=partition_id) / second


def deploy_target(
    node_config: Mapping[str, Any],
    message: Mapping[str, Any],
    partition_id: int,
    *,
    simulated: bool,
) -> DeployTarget:
    """The node's store and trusted key; the message's are used only in simulation.

    Parameters
    ----------
    node_config
        The node's own configuration (`model-store`, `trusted-key`, `allow-model-switch`,
        `device-class`, `runtime`).
    message
        The deploy message's config record (it may carry the simulation's root and key, and
        the tier the server assigned this node).
    partition_id
        The node's partition, which names its store in simulation.
    simulated
        Whether the node knows it is simulated (see `is_simulated`).

    """
    allow = _truthy(node_config.get(m.NODE_ALLOW_MODEL_SWITCH, False))
    tier = str(node_config.get(m.NODE_DEVICE_CLASS, ""))
    assigned = str(message.get(m.DEPLOY_TIER, ""))
    runtime = str(node_config.get(m.NODE_RUNTIME, "onnx"))
    if runtime not in RUNTIMES:  # a typo would otherwise refuse every bundle for its artifact
        refusal = (
            f"this node's {m.NODE_RUNTIME!r} is {runtime[:40]!r}, not one of {', '.join(RUNTIMES)}"
        )
        return DeployTarget(None, None, allow, refusal, tier, assigned)
    store: Path | None = None
    if m.NODE_MODEL_STORE in node_config:
        store = Path(str(node_config[m.NODE_MODEL_STORE]))
    elif simulated and m.SIMULATION_STORE_ROOT in message:
        store = simulated_store(str(message[m.SIMULATION_STORE_ROOT]), partition_id)
    if m.NODE_TRUSTED_KEY in node_config:
        key = Path(str(node_config[m.NODE_TRUSTED_KEY]))
    elif simulated and m.SIMULATION_TRUSTED_KEY in message:
        key = Path(str(message[m.SIMULATION_TRUSTED_KEY]))
    else:
        refusal = (
            f"this node has no {m.NODE_TRUSTED_KEY!r} in its node config and is not simulated, "
            "so it trusts no key and refuses every bundle (a key sent with a bundle is never "
            "trusted outside simulation)"
        )
        return DeployTarget(store, None, allow, refusal, tier, assigned, runtime)
    if store is None:
        refusal = f"this node has no {m.NODE_MODEL_STORE!r} in its node config"
        return DeployTarget(None, key, allow, refusal, tier, assigned, runtime)
    return DeployTarget(store, key, allow, tier=tier, assigned=assigned, runtime=runtime)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return value is True or value == 1
