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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

EXTRA_HINT = "pip install -e '.[litert]'"
# LiteRT's TensorType codes -> bytes per element (schema.fbs).
TFLITE_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 16: 2, 17: 1}
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
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 - optional
    except ImportError:
        raise LiteRtError(f"running a tflite model needs ai-edge-litert: {EXTRA_HINT}") from None
    made: list[Any] = []

    def load() -> None:
        made.append(Interpreter(model_content=model, num_threads=1))
        made[0].allocate_tensors()

    try:
        capture_stderr(load)  # "INFO: Created TensorFlow Lite XNNPACK delegate"
        interpreter = made[0]
    except (ValueError, RuntimeError) as err:
        raise LiteRtError(f"LiteRT cannot load the model: {_first_line(err)}") from None
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
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


def planned_arena(model: bytes) -> int:
    """Bytes of the activation arena a tflite graph needs, planned as TFLM plans it.

    A tensor is live from the operator that writes it (inputs: from the start) to the last
    that reads it (outputs: to the end); constants are flash. Buffers are placed greedily,
    largest first, each at the lowest 16-byte-aligned offset free for its whole lifetime
    (TFLM's GreedyMemoryPlanner), which can exceed the peak of live bytes when the arena
    fragments. Read from the flatbuffer with LiteRT's schema.
    """
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415 - optional
    except ImportError:
        raise LiteRtError(f"reading a tflite model needs ai-edge-litert: {EXTRA_HINT}") from None
    try:
        graph = schema.Model.GetRootAs(model, 0).Subgraphs(0)
        operators = [graph.Operators(i) for i in range(graph.OperatorsLength())]
        steps = [(list(op.InputsAsNumpy()), list(op.OutputsAsNumpy())) for op in operators]
        inputs, outputs = list(graph.InputsAsNumpy()), list(graph.OutputsAsNumpy())
        written = set(inputs) | {t for _, outs in steps for t in outs}
        sizes = {t: _tensor_bytes(graph.Tensors(t)) for t in written if t >= 0}
    except Exception as err:  # noqa: BLE001 - a corrupt flatbuffer raises anything
        raise LiteRtError(f"not a readable tflite model: {_first_line(err)}") from None
    live = {t: [0, 0] for t in inputs}
    for step, (ins, outs) in enumerate(steps):
        for t in (*ins, *outs):
            if t in sizes:
                span = live.setdefault(t, [step, step])
                span[1] = step
    for t in outputs:
        live[t][1] = len(steps) - 1
    return _greedy_arena({t: (-(-sizes[t] // 16) * 16, lo, hi) for t, (lo, hi) in live.items()})


def _greedy_arena(buffers: dict[int, tuple[int, int, int]]) -> int:
    """Arena end after placing (size, first step, last step) buffers largest first.

    Among equal sizes the higher tensor index goes first, as TFLM's planner orders them.
    """
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    order = sorted(buffers, key=lambda t: (-buffers[t][0], -t))
    for size, first, last in (buffers[t] for t in order):
        busy = sorted((o, s) for o, s, f, la in placed if f <= last and first <= la)
        offset = 0
        for start, length in busy:
            if offset + size <= start:
                break
            offset = max(offset, start + length)
        placed.append((offset, size, first, last))
    return max((o + s for o, s, _, _ in placed), default=0)


def _tensor_bytes(tensor: Any) -> int:
    itemsize = TFLITE_ITEMSIZE.get(tensor.Type())
    if itemsize is None:
        raise LiteRtError(f"tensor type {tensor.Type()} has no known size")
    return itemsize * int(np.prod(tensor.ShapeAsNumpy()))


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
    return Quantization(detail["dtype"], tuple(detail["shape"][1:]), float(scale), int(zero))


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
            errors.append(_first_line(err))
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
