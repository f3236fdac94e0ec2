"""Running a `tflite` artifact as devices do: LiteRT (phones) or TensorFlow Lite Micro (MCUs).

Both interpreters take one raw sample at a time (batch 1). An int8 model's input is quantized
with the model's own scale and zero point, its int8 logits dequantized; probabilities are their
softmax, the label their argmax. TFLM's arena is what its RecordingMicroAllocator reports (it has
no Python getter: the report goes to the C stderr, read here through file descriptor 2). The
interpreters come with the `litert` extra (`ai-edge-litert`, `tflite-micro`); without them the
error names the extra.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

EXTRA_HINT = "pip install ai-edge-litert tflite-micro (on a server: pip install -e '.[litert]')"
ARENA_PATTERN = {
    "total": r"Arena allocation total (\d+) bytes",
    "head": r"Arena allocation head (\d+) bytes",
    "tail": r"Arena allocation tail (\d+) bytes",
}


class LiteRtError(RuntimeError):
    """A tflite model cannot be run here; the message says why in one line."""


@dataclass(frozen=True)
class Quantization:
    """One tensor's dtype, per-sample shape and (scale, zero point); scale 0 for float."""

    dtype: Any
    shape: tuple[int, ...]
    scale: float
    zero_point: int

    def quantize(self, sample: np.ndarray) -> np.ndarray:
        """A raw float sample as this tensor holds it, batch 1."""
        x = np.asarray(sample, dtype=np.float32).reshape(1, *self.shape)
        if self.scale == 0.0:
            return x.astype(self.dtype)
        info = np.iinfo(self.dtype)
        q = np.round(x / self.scale + self.zero_point)
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """float32 values of this tensor."""
        if self.scale == 0.0:
            return np.asarray(values, dtype=np.float32)
        return ((values.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)


@dataclass(frozen=True)
class Arena:
    """TFLM's arena for one model: total = head (activations, planned) + tail (persistent)."""

    total: int
    head: int
    tail: int


def litert_logits(model: bytes, samples: np.ndarray) -> np.ndarray:
    """Logits (float32, one row per sample) of `model` in LiteRT's interpreter."""
    interpreter, inp, out = _litert_interpreter(model)
    return _invoke_each(interpreter, inp, out, samples)


def _litert_interpreter(model: bytes) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """LiteRT's interpreter on `model` (one thread), with its input's and output's details."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 - optional
    except ImportError:
        raise LiteRtError(f"a tflite model needs ai-edge-litert: {EXTRA_HINT}") from None
    made: list[Any] = []

    def load() -> None:
        made.append(Interpreter(model_content=model, num_threads=1))
        made[0].allocate_tensors()

    try:
        capture_stderr(load)  # "INFO: Created TensorFlow Lite XNNPACK delegate"
    except (ValueError, RuntimeError) as err:
        raise LiteRtError(f"LiteRT cannot load the model: {first_line(err)}") from None
    inputs, outputs = made[0].get_input_details(), made[0].get_output_details()
    if len(inputs) != 1 or len(outputs) != 1:
        raise LiteRtError(
            f"a tflite model here has one input and one output, not {len(inputs)}/{len(outputs)}"
        )
    return made[0], inputs[0], outputs[0]


def _invoke_each(
    interpreter: Any, inp: dict[str, Any], out: dict[str, Any], samples: np.ndarray
) -> np.ndarray:
    """Dequantized outputs of `samples`, invoked one at a time (batch 1)."""
    q_in, q_out = _litert_quantization(inp), _litert_quantization(out)

    def one(sample: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(inp["index"], q_in.quantize(sample))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return _run(samples, q_in, q_out, one)


def tflm_logits(model: bytes, samples: np.ndarray, arena_size: int) -> np.ndarray:
    """Logits of `model` in TensorFlow Lite Micro's interpreter with an `arena_size` arena."""
    interpreter = _tflm_interpreter(model, arena_size)
    inp, out = interpreter.get_input_details(0), interpreter.get_output_details(0)
    q_in, q_out = _tflm_quantization(inp), _tflm_quantization(out)

    def one(sample: np.ndarray) -> np.ndarray:
        interpreter.set_input(q_in.quantize(sample), 0)
        interpreter.invoke()
        return np.asarray(interpreter.get_output(0))

    return _run(samples, q_in, q_out, one)


def tflm_arena(model: bytes, arena_size: int = 1 << 20) -> Arena:
    """The arena TFLM's allocator reports for `model` (its tensors planned, nothing invoked)."""
    interpreter = _tflm_interpreter(model, arena_size)
    text = capture_stderr(interpreter.print_allocations)
    figures = {}
    for key, pattern in ARENA_PATTERN.items():
        match = re.search(pattern, text)
        if match is None:
            raise LiteRtError(f"TFLM's allocation report has no {key!r} figure")
        figures[key] = int(match.group(1))
    return Arena(**figures)


def tflm_min_arena(model: bytes, high: int = 1 << 20) -> int:
    """The smallest arena (16-byte steps) in which TFLM builds the interpreter for `model`.

    Can exceed the allocator's reported total: TFLM's memory planner keeps its own scratch
    in the arena while it plans. The search starts at that total (an arena far too small can
    crash TFLM's Python interpreter instead of raising).
    """
    low = tflm_arena(model, high).total - 16
    while high - low > 16:
        middle = (low + high) // 2
        low, high = (low, middle) if _tflm_accepts(model, middle) else (middle, high)
    return high


def _tflm_accepts(model: bytes, arena_size: int) -> bool:
    try:
        _tflm_interpreter(model, arena_size)
    except LiteRtError:
        return False
    return True


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, float32."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def _run(
    samples: np.ndarray,
    q_in: Quantization,
    q_out: Quantization,
    one: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    per_sample = int(np.prod(q_in.shape))
    if x.size % per_sample:
        raise LiteRtError(f"samples of shape {x.shape[1:]} do not fit the input {q_in.shape}")
    rows = [q_out.dequantize(one(s)).reshape(-1) for s in _samples(x, per_sample)]
    return np.stack(rows) if rows else np.zeros((0, int(np.prod(q_out.shape))), np.float32)


def _samples(x: np.ndarray, per_sample: int) -> Iterator[np.ndarray]:
    yield from x.reshape(-1, per_sample)


def _litert_quantization(detail: dict[str, Any]) -> Quantization:
    scale, zero = detail.get("quantization", (0.0, 0))
    shape = tuple(int(v) for v in detail["shape"][1:])
    return Quantization(detail["dtype"], shape, float(scale), int(zero))


def _tflm_quantization(detail: dict[str, Any]) -> Quantization:
    params = detail.get("quantization_parameters", {})
    scales, zeros = params.get("scales", []), params.get("zero_points", [])
    scale = float(scales[0]) if len(scales) else 0.0
    zero = int(zeros[0]) if len(zeros) else 0
    shape = tuple(int(v) for v in detail["shape"][1:])
    return Quantization(detail["dtype"], shape, scale, zero)


def _tflm_interpreter(model: bytes, arena_size: int) -> Any:
    try:
        from tflite_micro.python.tflite_micro import runtime  # noqa: PLC0415 - optional
    except ImportError:
        raise LiteRtError(f"TensorFlow Lite Micro needs tflite-micro: {EXTRA_HINT}") from None
    errors: list[str] = []

    def build() -> Any:
        try:
            return runtime.Interpreter.from_bytes(model, arena_size=arena_size)
        except (RuntimeError, ValueError) as err:
            errors.append(first_line(err))
            return None

    holder: list[Any] = []
    log = capture_stderr(lambda: holder.append(build()))  # TFLM prints its failures there
    if holder and holder[0] is not None:
        return holder[0]
    said = next((line for line in log.splitlines() if line.strip()), errors[0] if errors else "")
    raise LiteRtError(f"TFLM cannot allocate the model in a {arena_size}-byte arena: {said}")


def capture_stderr(fn: Callable[[], Any]) -> str:
    """What `fn` writes to file descriptor 2 (C code's stderr), as text."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def first_line(err: BaseException) -> str:
    """An error's first line (its type name when it has no text)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class TensorInfo:
    """What onnxruntime's NodeArg tells about an input or output: name, shape, type."""

    name: str
    shape: list[int | str]
    type: str


class LiteRtSession:
    """A tflite model behind the slice of onnxruntime's InferenceSession the device uses.

    One input (raw samples, any batch: run one sample at a time, as LiteRT and TFLM take
    batch 1) and the device contract's two outputs, `probabilities` (softmax of the dequantized
    logits) and `label` (their argmax), under the manifest's names.
    """

    def __init__(self, model: bytes, input_name: str, probabilities: str, label: str) -> None:
        self._interpreter, self._in, self._out = _litert_interpreter(model)
        self._lock = threading.Lock()  # one interpreter: fedge serve's workers take turns
        self._q_in, q_out = _litert_quantization(self._in), _litert_quantization(self._out)
        self._names = (input_name, probabilities, label)
        self.classes = int(np.prod(q_out.shape))

    def get_inputs(self) -> list[TensorInfo]:
        """The one input: raw float samples, a free batch axis."""
        return [TensorInfo(self._names[0], ["batch", *self._q_in.shape], "tensor(float)")]

    def get_outputs(self) -> list[TensorInfo]:
        """Probabilities (float) and label (int64), as fedge's ONNX models name them."""
        return [
            TensorInfo(self._names[1], ["batch", self.classes], "tensor(float)"),
            TensorInfo(self._names[2], ["batch"], "tensor(int64)"),
        ]

    def run(
        self,
        output_names: list[str] | None,
        feed: dict[str, np.ndarray],
        run_options: Any = None,
    ) -> list[np.ndarray]:
        """The asked outputs for the batch in `feed`, computed one sample at a time.

        `run_options` (onnxruntime's, to stop a run) is accepted and ignored: LiteRT cannot
        stop an invoke; the device check times each run and its child process has a timeout.
        """
        if set(feed) != {self._names[0]}:
            raise LiteRtError(f"the model's one input is {self._names[0]!r}, got {sorted(feed)}")
        x = np.asarray(feed[self._names[0]], dtype=np.float32)
        if x.shape[1:] != self._q_in.shape:
            raise LiteRtError(f"input shape {x.shape[1:]} is not {self._q_in.shape}")
        with self._lock:
            logits = _invoke_each(self._interpreter, self._in, self._out, x)
        values = {
            self._names[1]: softmax(logits),
            self._names[2]: logits.argmax(axis=1).astype(np.int64),
        }
        names = output_names or [self._names[1], self._names[2]]
        missing = [n for n in names if n not in values]
        if missing:
            raise LiteRtError(f"the model has no outputs {missing}; it has {sorted(values)}")
        return [values[n] for n in names]
