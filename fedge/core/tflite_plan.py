"""The activation arena of a tflite graph, planned as TensorFlow Lite Micro plans it.

fedge's prediction of what a microcontroller's tensor arena must hold for activations; checked
against TFLM's own report (`fedge.core.litert.tflm_arena`) in tests and benchmarks/targets.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedge.core.litert import EXTRA_HINT, LiteRtError, first_line

# LiteRT's TensorType codes -> bytes per element (schema.fbs).
TFLITE_ITEMSIZE = {0: 4, 1: 2, 2: 4, 3: 1, 4: 8, 6: 1, 7: 2, 9: 1, 10: 8, 16: 2, 17: 1}


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
        raise LiteRtError(f"not a readable tflite model: {first_line(err)}") from None
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
