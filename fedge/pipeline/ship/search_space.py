"""The search space: the hand-written family as the first trials, then sampled architectures."""

from __future__ import annotations

import math
from typing import Any

from fedge.core import archspec
from fedge.core.models import (
    DEEP_STUDENTS,
    FAST_STUDENTS,
    SEPARABLE_STUDENTS,
    STUDENT_WIDTHS,
    separable_spec,
)

CHANNELS = (4, 8, 12, 16, 24, 32, 48)
HIDDEN = (16, 32, 64, 128)


def seed_specs(input_shape: tuple[int, ...]) -> list[str]:
    """The hand-written family (fedge.core.models) as specs for this shape: the first trials.

    The search starts from what a person would pick; flat data gets two MLPs.
    """
    if len(input_shape) == 1:
        return ["arch:h32-h16-relu", "arch:h64-h32-relu"]
    k = 3 if len(input_shape) == 3 else 5
    out = []
    for name, (c1, c2, h) in STUDENT_WIDTHS.items():
        if name in DEEP_STUDENTS:  # three equal convolutions, pooling after the first two
            out.append(f"arch:c{c1}k{k}p-c{c2}k{k}p-c{h}k{k}-relu")
        elif name in FAST_STUDENTS:  # pooling between the two convolutions
            out.append(f"arch:c{c1}k{k}p-c{c2}k{k}-h{h}-relu")
        else:
            out.append(f"arch:c{c1}k{k}-c{c2}k{k}p-h{h}-relu")
    return out + [separable_spec(name, input_shape) for name in SEPARABLE_STUDENTS]


def sample(trial: Any, input_shape: tuple[int, ...]) -> str:
    """An architecture for this input shape, drawn through an Optuna trial."""
    activation = trial.suggest_categorical("activation", archspec.ACTIVATIONS)
    if len(input_shape) == 1:
        depth = trial.suggest_int("hidden_layers", 1, 2)
        hidden = tuple(trial.suggest_categorical(f"h{i}", HIDDEN) for i in range(depth))
        return archspec.Arch((), hidden, activation).spec
    kernels = (3, 5) if len(input_shape) == 3 else (3, 5, 7)
    max_pools = int(math.log2(min(input_shape[1:])))
    convs: list[archspec.Conv] = []
    for i in range(trial.suggest_int("convs", 1, 3)):
        # the first may run at stride 2: it computes only the positions pooling would keep
        strided = not i and trial.suggest_categorical("stride0", (False, True))
        pooled = trial.suggest_categorical(f"p{i}", (False, True))
        pooled = pooled and sum(c.halvings for c in convs) + strided < max_pools
        # after the first: a full or a depthwise-separable convolution (DS-CNN, MobileNet)
        separable = bool(i) and trial.suggest_categorical(f"s{i}", (False, True))
        width = trial.suggest_categorical(f"c{i}", CHANNELS)
        kernel = trial.suggest_categorical(f"k{i}", kernels)
        convs.append(archspec.Conv(width, kernel, pooled, separable, strided))
    hidden = (trial.suggest_categorical("h0", HIDDEN),) if trial.suggest_int("hidden", 0, 1) else ()
    return archspec.Arch(tuple(convs), hidden, activation).spec
