"""The device-model check: the model loads and runs as its manifest says, in a limited child process.

A signed model could still exhaust memory or never finish when onnxruntime loads or runs it,
so the check runs in `python -m fedge.client.runtime.devicecheck` under an address-space
limit and a wall-clock timeout, before a bundle may become current. The child loads the model
with the device's hardened session, runs it once on a zero input of the declared shape, and
checks the input and both outputs (names, dtypes, shapes, label range).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import OrderedDict
from typing import Any

from fedge.core.manifest import Manifest

TIMEOUT_S = 60.0
MEMORY_MB = 1024  # address space of the child (python + numpy + onnxruntime reserve ~200 MB)
_PASSED: OrderedDict[str, None] = OrderedDict()  # (sha256, contract) that passed in this process


class DeviceModelError(Exception):
    """The model does not load or run as the device contract requires."""


def check_device_model(
    model_bytes: bytes,
    manifest: Manifest,
    *,
    timeout: float = TIMEOUT_S,
    memory_mb: int = MEMORY_MB,
) -> None:
    """Load and run the model in a child process with limits; DeviceModelError if it fails.

    The bytes must already be verified against the manifest (size, sha256, no external data).
    A model that passed once in this process with the same contract is not checked again
    (same bytes, same runtime, same expectations).
    """
    contract = {
        "input": manifest.input.name,
        "shape": list(manifest.sample_shape),
        "probabilities": manifest.output.probabilities,
        "label": manifest.output.label,
        "classes": len(manifest.labels),
    }
    key = manifest.model_sha256 + json.dumps(contract, sort_keys=True)
    if key in _PASSED:
        return
    command = [sys.executable, "-m", "fedge.client.runtime.devicecheck", json.dumps(contract)]
    command.append(str(memory_mb))
    # The child imports this very fedge, wherever it came from (a Flower app directory on
    # sys.path, say, rather than an installed package).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        proc = subprocess.run(
            command, input=model_bytes, capture_output=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired:
        raise DeviceModelError(f"the model did not load and run within {timeout:g} s") from None
    except OSError as err:
        raise DeviceModelError(f"cannot start the check process: {err}") from None
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    try:
        verdict = json.loads(lines[-1]) if lines else {}
    except ValueError:
        verdict = {}
    if proc.returncode == 0 and verdict.get("ok") is True:
        _PASSED[key] = None
        while len(_PASSED) > 16:
            _PASSED.popitem(last=False)
        return
    if isinstance(verdict.get("error"), str):
        raise DeviceModelError(verdict["error"][:500])
    raise DeviceModelError(
        f"the check process ended with code {proc.returncode} (over {memory_mb} MB of address "
        "space, or killed) before the model ran"
    )


def _child_check(model_bytes: bytes, contract: dict[str, Any]) -> None:
    """What the child runs; raises DeviceModelError naming the first mismatch."""
    import numpy as np

    from fedge.client.runtime.session import device_session

    try:
        session = device_session(model_bytes)
    except Exception as err:  # onnxruntime raises its own exception types
        raise DeviceModelError(f"onnxruntime cannot load the model: {_short(err)}") from None
    inputs = session.get_inputs()
    shape = contract["shape"]
    if len(inputs) != 1 or inputs[0].name != contract["input"]:
        names = [i.name for i in inputs]
        raise DeviceModelError(f"model inputs {names} are not one input {contract['input']!r}")
    declared = inputs[0].shape
    if inputs[0].type != "tensor(float)" or len(declared) != 1 + len(shape):
        raise DeviceModelError(
            f"model input is {inputs[0].type} {declared}, not float (N, *{shape})"
        )
    if any(isinstance(d, int) and d != want for d, want in zip(declared[1:], shape, strict=True)):
        raise DeviceModelError(f"model input shape {declared} does not fit (N, *{shape})")
    outputs = {o.name for o in session.get_outputs()}
    wanted = [contract["probabilities"], contract["label"]]
    if not set(wanted) <= outputs:
        raise DeviceModelError(f"model outputs {sorted(outputs)} lack {wanted}")
    try:
        probabilities, label = session.run(
            wanted, {contract["input"]: np.zeros((1, *shape), np.float32)}
        )
    except Exception as err:
        raise DeviceModelError(f"the model fails on a zero input: {_short(err)}") from None
    classes = contract["classes"]
    if probabilities.dtype != np.float32 or probabilities.shape != (1, classes):
        raise DeviceModelError(
            f"probabilities are {probabilities.dtype} {probabilities.shape}, not float32 (1, {classes})"
        )
    if label.dtype != np.int64 or label.shape != (1,) or not 0 <= int(label[0]) < classes:
        raise DeviceModelError(
            f"label is {label.dtype} {label.shape}, not int64 (1,) in 0..{classes - 1}"
        )


def _short(err: Exception) -> str:
    """The end of an onnxruntime message (they carry source paths and C++ signatures)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else "..." + text[-300:]


def _main() -> None:
    contract, memory_mb = json.loads(sys.argv[1]), int(sys.argv[2])
    try:
        import resource

        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # no rlimits on this platform: the timeout holds
        pass
    try:
        _child_check(sys.stdin.buffer.read(), contract)
    except DeviceModelError as err:
        print(json.dumps({"ok": False, "error": str(err)}))
    except MemoryError:
        print(json.dumps({"ok": False, "error": f"the model needs more than {memory_mb} MB"}))
    else:
        print(json.dumps({"ok": True}))


if __name__ == "__main__":
    _main()
