"""The device's sessions: ONNX from bytes with external data locked out; ORT format; LiteRT."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

import onnxruntime as ort

from fedge.core.litert import LiteRtSession
from fedge.core.ort import BatchOne, cpu_options, ort_format_session

# onnxruntime has no switch that turns external data off. Loaded from bytes, it resolves
# external-data paths against the working directory, `../` included (checked with 1.32). This
# entry points it at a fresh empty directory instead; onnxruntime (>= 1.24) refuses paths that
# resolve outside that directory (absolute, `..`, symlinks), and inside it there is nothing.
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
# Parse the bytes as an ONNX protobuf, never as an ORT-format flatbuffer the scanner cannot read.
LOAD_FORMAT = "session.load_model_format"


def device_session(model_bytes: bytes) -> ort.InferenceSession:
    """A CPU session as `fedge.core.ort.make_session` builds it, hardened for untrusted bytes.

    One thread, sequential, all optimisations (what the benchmarks measure); ONNX format only;
    external data resolved in an empty private directory, so any reference fails to load.
    Raises onnxruntime's own exceptions when the model does not load.
    """
    options = cpu_options(model_bytes)
    options.log_severity_level = 4  # errors reach the caller as exceptions
    options.add_session_config_entry(LOAD_FORMAT, "ONNX")
    empty = tempfile.mkdtemp(prefix="fedge-no-external-data-")
    try:
        options.add_session_config_entry(EXTERNAL_DATA_FOLDER, empty)
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    finally:
        shutil.rmtree(empty, ignore_errors=True)


def runtime_session(model: bytes, runtime: str, names: tuple[str, str, str]) -> Any:
    """The session a device of `runtime` runs `model` in, behind InferenceSession's interface.

    onnx: `device_session`; ort: the ORT format, one sample per run; tflite: LiteRT, with the
    device contract's (input, probabilities, label) `names`. Raises LiteRtError or
    onnxruntime's own exceptions when the model does not load.
    """
    if runtime == "ort":
        return BatchOne(ort_format_session(model))
    if runtime == "tflite":
        return LiteRtSession(model, *names)
    return device_session(model)
