"""The device-model check: the model loads and runs as its manifest says, in a limited child process.

A signed model could still exhaust memory or never finish when onnxruntime loads or runs it,
and it may do so only on some inputs, so the check runs in `python -m
fedge.client.runtime.devicecheck` under an address-space limit and a wall-clock timeout, before
a bundle may become current. The child loads the model with the device's hardened session and
runs it at batch 1 on several inputs: zeros, the manifest's normalisation mean (`shift`) and
8 standard deviations either side of it (`shift -+ 8 / scale`; the model sees -8 and +8), each
run stopped at `max_run_ms`. It checks the input and both outputs (names, dtypes, shapes, label
range) and reports each run's time and the process's peak memory, which must stay within the
stated limits (`CheckLimits`; `fedge install --check-*`). No finite set of inputs proves a
model harmless: `fedge serve` also stops any request's run at its time limit.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

from fedge.core.manifest import Manifest

SPREAD = 8.0  # the extreme inputs: the model sees -SPREAD and +SPREAD (standard deviations)


@dataclass(frozen=True)
class CheckLimits:
    """What the device-model check allows a model (`fedge install` / `verify --check-*`)."""

    timeout_s: float = 60.0  # wall clock of the whole check process: start, load, every run
    memory_mb: int = (
        1024  # address space of the child (python + numpy + onnxruntime reserve ~200 MB)
    )
    max_run_ms: float = 1000.0  # one batch-1 run on any check input; a run past it is stopped
    max_peak_mb: int = 512  # peak resident memory of the child (~70 MB before the model loads)

    @classmethod
    def peak(cls, max_run_ms: float, max_peak_mb: int) -> CheckLimits:
        """Limits for a run time and a peak memory; the address space grows with the peak."""
        return cls(
            memory_mb=max(1024, 2 * max_peak_mb), max_run_ms=max_run_ms, max_peak_mb=max_peak_mb
        )


@dataclass(frozen=True)
class CheckReport:
    """What the check measured: each input's run time and the child's peak memory."""

    runs_ms: dict[str, float] = field(default_factory=dict)  # batch-1 run time by check input
    peak_mb: float = 0.0  # peak resident memory of the check process (python included)

    def to_json(self) -> dict[str, Any]:
        """For state.json's install history and `fedge verify --json`."""
        return asdict(self)


class DeviceModelError(Exception):
    """The model does not load or run as the device contract requires."""


_PASSED: OrderedDict[str, CheckReport] = OrderedDict()  # checks that passed in this process


def check_device_model(
    model_bytes: bytes,
    manifest: Manifest,
    *,
    limits: CheckLimits | None = None,
    runtime: str = "onnx",
) -> CheckReport:
    """Load and run the model in a child process with limits; DeviceModelError if it fails.

    The bytes must already be verified against the manifest (size, sha256, no external data):
    model.onnx, or with `runtime` "tflite" the bundle's model.tflite, run in LiteRT.
    A model that passed once in this process with the same contract and limits is not checked
    again (same bytes, same runtime, same expectations): its report is returned.
    """
    limits = limits or CheckLimits()
    prep = manifest.preprocessing
    artifact = manifest.artifact(runtime)
    digest = artifact.sha256 if artifact is not None else manifest.model_sha256
    contract = {
        "runtime": runtime,
        "input": manifest.input.name,
        "shape": list(manifest.sample_shape),
        "probabilities": manifest.output.probabilities,
        "label": manifest.output.label,
        "classes": len(manifest.labels),
        "shift": prep.shift,
        "scale": prep.scale,
        "max_run_ms": limits.max_run_ms,
    }
    key = digest + json.dumps([contract, asdict(limits)], sort_keys=True)
    if key in _PASSED:
        return _PASSED[key]
    verdict = _run_child(model_bytes, contract, limits)
    if verdict.get("ok") is not True:
        raise DeviceModelError(str(verdict.get("error"))[:500])
    try:
        report = CheckReport(dict(verdict["runs_ms"]), float(verdict["peak_mb"]))
    except (KeyError, TypeError, ValueError):
        raise DeviceModelError("the check process gave no figures") from None
    if report.peak_mb > limits.max_peak_mb:
        raise DeviceModelError(
            f"the check process peaked at {report.peak_mb:.0f} MB of memory running the model; "
            f"the limit is {limits.max_peak_mb} MB"
        )
    _PASSED[key] = report
    while len(_PASSED) > 16:
        _PASSED.popitem(last=False)
    return report


def _run_child(model_bytes: bytes, contract: dict[str, Any], limits: CheckLimits) -> dict:
    """The child's verdict: {"ok": true, "runs_ms", "peak_mb"} or {"ok": false, "error"}."""
    command = [sys.executable, "-m", "fedge.client.runtime.devicecheck", json.dumps(contract)]
    command.append(str(limits.memory_mb))
    # The child imports this very fedge, wherever it came from (a Flower app directory on
    # sys.path, say, rather than an installed package).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    timeout = limits.timeout_s
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
    if not isinstance(verdict, dict):
        verdict = {}
    if (proc.returncode == 0 and verdict.get("ok") is True) or isinstance(
        verdict.get("error"), str
    ):
        return verdict
    return {
        "ok": False,
        "error": f"the check process ended with code {proc.returncode} (over {limits.memory_mb} "
        "MB of address space, or killed) before the model ran",
    }


def check_inputs(
    shape: list[int], shift: float | list[float] | None, scale: float | list[float] | None
) -> dict[str, Any]:
    """The batch-1 inputs the check runs, by name: zeros, the mean, and the mean -+ 8 sd.

    `shift` and `scale` are the manifest's (x_model = (x_raw - shift) * scale): one value, or
    one per channel (the first axis) or per value. A statistic that fits neither is left out.
    """
    import numpy as np

    zeros = np.zeros((1, *shape), np.float32)
    mean, factor = _statistic(shift, shape, 0.0), _statistic(scale, shape, 1.0)
    inputs = {"zeros": zeros}
    if mean is None or factor is None:
        return inputs
    step = SPREAD / np.where(factor != 0, np.abs(factor), 1.0)
    inputs["mean"] = zeros + mean
    with np.errstate(over="ignore"):  # a huge statistic saturates at float32's range
        inputs[f"mean-{SPREAD:g}sd"] = (zeros + mean - step).astype(np.float32)
        inputs[f"mean+{SPREAD:g}sd"] = (zeros + mean + step).astype(np.float32)
    return inputs


def _statistic(value: float | list[float] | None, shape: list[int], default: float) -> Any:
    """A statistic as a float32 array of the sample's shape, or None if it fits no axis."""
    import numpy as np

    array = np.asarray(default if value is None else value, dtype=np.float32)
    if array.ndim == 0:
        return np.full(shape, array, np.float32)
    if array.size == shape[0]:
        return np.broadcast_to(array.reshape(-1, *[1] * (len(shape) - 1)), shape)
    if array.size == math.prod(shape):
        return array.reshape(shape)
    return None


def _open_session(model_bytes: bytes, contract: dict[str, Any]) -> Any:
    """The hardened session, its input and outputs checked against the contract."""
    from fedge.client.runtime.session import runtime_session
    from fedge.core.litert import LiteRtError

    contract_names = (contract["input"], contract["probabilities"], contract["label"])
    try:
        session = runtime_session(model_bytes, contract.get("runtime", "onnx"), contract_names)
    except LiteRtError as err:
        raise DeviceModelError(str(err)) from None
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
    return session


def _timed_run(session: Any, contract: dict[str, Any], name: str, x: Any) -> tuple[Any, float]:
    """One run, stopped at max_run_ms: (outputs, milliseconds)."""
    import threading
    import time

    import onnxruntime as ort

    limit_ms = contract["max_run_ms"]
    options = ort.RunOptions()
    stopper = threading.Timer(limit_ms / 1000, lambda: setattr(options, "terminate", True))
    wanted = [contract["probabilities"], contract["label"]]
    stopper.start()
    start = time.perf_counter()
    try:
        outputs = session.run(wanted, {contract["input"]: x}, options)
    except Exception as err:
        if options.terminate:
            outputs = None
        else:
            raise DeviceModelError(f"the model fails on the {name} input: {_short(err)}") from None
    finally:
        stopper.cancel()
    elapsed = (time.perf_counter() - start) * 1000
    if outputs is None or elapsed > limit_ms:
        raise DeviceModelError(
            f"the model ran longer than {limit_ms:g} ms on the {name} input (the limit for one "
            "batch-1 run); it was stopped"
        )
    return outputs, elapsed


def _child_check(model_bytes: bytes, contract: dict[str, Any]) -> dict[str, float]:
    """What the child runs: each check input's run time; DeviceModelError at the first mismatch."""
    import numpy as np

    session = _open_session(model_bytes, contract)
    classes, runs = contract["classes"], {}
    inputs = check_inputs(contract["shape"], contract["shift"], contract["scale"])
    for name, x in inputs.items():
        (probabilities, label), runs[name] = _timed_run(session, contract, name, x)
        if probabilities.dtype != np.float32 or probabilities.shape != (1, classes):
            raise DeviceModelError(
                f"probabilities are {probabilities.dtype} {probabilities.shape} on the {name} "
                f"input, not float32 (1, {classes})"
            )
        if label.dtype != np.int64 or label.shape != (1,) or not 0 <= int(label[0]) < classes:
            raise DeviceModelError(
                f"label is {label.dtype} {label.shape} on the {name} input, not int64 (1,) in "
                f"0..{classes - 1}"
            )
    return {name: round(ms, 3) for name, ms in runs.items()}


def _short(err: Exception) -> str:
    """The end of an onnxruntime message (they carry source paths and C++ signatures)."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else "..." + text[-300:]


def _peak_mb() -> float:
    """Peak resident memory of this process, in MB.

    VmHWM on Linux (ru_maxrss there keeps the parent's peak from before exec), ru_maxrss
    elsewhere (macOS reports bytes), else 0.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError):
        pass
    try:
        import resource
    except ImportError:
        return 0.0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1)


def _main() -> None:
    contract, memory_mb = json.loads(sys.argv[1]), int(sys.argv[2])
    try:
        import resource

        limit = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # no rlimits on this platform: the timeout holds
        pass
    try:
        runs = _child_check(sys.stdin.buffer.read(), contract)
    except DeviceModelError as err:
        print(json.dumps({"ok": False, "error": str(err)}))
    except MemoryError:
        print(json.dumps({"ok": False, "error": f"the model needs more than {memory_mb} MB"}))
    else:
        print(json.dumps({"ok": True, "runs_ms": runs, "peak_mb": _peak_mb()}))


if __name__ == "__main__":
    _main()
