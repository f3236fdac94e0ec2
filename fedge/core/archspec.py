"""Searched student architectures as a spec string: `arch:c16k3p-c32k3-h64-relu` (torch-free).

A spec lists convolutions (`c<channels>k<kernel>`, `s`: stride 2, so it computes only every
other position in each dimension; `p`: 2x max pooling after it; `d` instead
of `c`: depthwise-separable, a depthwise `k`x`k` convolution then a pointwise one to
`<channels>`, as in DS-CNN and MobileNet), then hidden linear layers (`h<units>`), then the
activation; the classifier to the classes is implied. Images and signals take convolutions;
flat features only hidden layers. The spec is the student's name everywhere a student is named
(settings, candidates, the bundle manifest), so a device knows what it runs and a client can
rebuild it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

PREFIX = "arch:"
ACTIVATIONS = ("relu", "hardswish")
KERNELS = (1, 3, 5, 7)
MAX_LAYERS = 6
MAX_WIDTH = 512
FORMAT = (
    "arch:c<channels>k<kernel>[s][p]-d<channels>k<kernel>[s][p]-...-h<units>-...-<activation>, "
    "e.g. arch:c16k3p-d32k3p-h64-relu"
)
_CONV = re.compile(r"([cd])(\d+)k(\d+)(s?)(p?)")


class Conv(NamedTuple):
    """One convolution layer of a spec."""

    width: int  # output channels
    kernel: int
    pooled: bool  # 2x max pooling after it
    separable: bool = False  # depthwise kernel x kernel, then pointwise to `width`
    strided: bool = False  # stride 2: half the positions in each dimension, as pooling gives

    @property
    def halvings(self) -> int:
        """How many times this layer halves each spatial dimension (stride, pooling)."""
        return int(self.strided) + int(self.pooled)


_HIDDEN = re.compile(r"h(\d+)")


@dataclass(frozen=True)
class Arch:
    """Convolutions (channels, kernel, pool after), hidden units, activation."""

    convs: tuple[Conv, ...]
    hidden: tuple[int, ...]
    activation: str = "relu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "convs", tuple(Conv(*c) for c in self.convs))
        widths = [c.width for c in self.convs] + list(self.hidden)
        if not 1 <= len(widths) <= MAX_LAYERS:
            raise ValueError(f"an architecture has 1 to {MAX_LAYERS} layers, got {len(widths)}")
        if any(not 1 <= w <= MAX_WIDTH for w in widths):
            raise ValueError(f"layer widths must be in [1, {MAX_WIDTH}], got {widths}")
        if any(c.kernel not in KERNELS for c in self.convs):
            raise ValueError(f"kernels must be one of {KERNELS}, got {self.convs}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; allowed: {ACTIVATIONS}")
        if self.convs and self.convs[0].separable:
            raise ValueError("the first convolution sees the input's channels: c, not d")

    @property
    def spec(self) -> str:
        """The spec string (`parse(a.spec) == a`)."""
        convs = [
            f"{'d' if c.separable else 'c'}{c.width}k{c.kernel}{'s' if c.strided else ''}"
            f"{'p' if c.pooled else ''}"
            for c in self.convs
        ]
        return PREFIX + "-".join([*convs, *(f"h{h}" for h in self.hidden), self.activation])

    def with_widths(self, widths: list[int]) -> Arch:
        """The same layout with other layer widths (a pruned student's), convolutions first."""
        n = len(self.convs)
        convs = tuple(c._replace(width=w) for w, c in zip(widths[:n], self.convs, strict=True))
        return Arch(convs, tuple(widths[n:]), self.activation)


def is_arch(name: str) -> bool:
    """Whether a student name is a spec rather than a family member."""
    return name.startswith(PREFIX)


def parse(name: str) -> Arch:
    """The architecture a spec names; ValueError naming the spec and the format otherwise."""
    if not is_arch(name):
        raise ValueError(f"not an architecture spec: {name!r}; format: {FORMAT}")
    parts = name[len(PREFIX) :].split("-")
    convs: list[Conv] = []
    hidden: list[int] = []
    try:
        *layers, activation = parts
        for part in layers:
            if (conv := _CONV.fullmatch(part)) and not hidden:
                convs.append(
                    Conv(int(conv[2]), int(conv[3]), conv[5] == "p", conv[1] == "d", conv[4] == "s")
                )
            elif hidden_match := _HIDDEN.fullmatch(part):
                hidden.append(int(hidden_match[1]))
            else:
                raise ValueError(f"bad layer {part!r}")
        return Arch(tuple(convs), tuple(hidden), activation)
    except ValueError as err:
        raise ValueError(f"bad architecture {name!r}: {err}; format: {FORMAT}") from None


def check_input(arch: Arch, input_shape: tuple[int, ...]) -> None:
    """ValueError if the architecture cannot take inputs of this shape."""
    if len(input_shape) == 1 and arch.convs:
        raise ValueError(f"{arch.spec}: flat features (D,) take only hidden layers (h<units>)")
    halvings = sum(c.halvings for c in arch.convs)
    if len(input_shape) > 1 and min(input_shape[1:]) < 2**halvings:
        raise ValueError(
            f"{arch.spec}: {halvings} poolings and strides shrink input {input_shape} to nothing"
        )


def check_student(student: str, input_shape: tuple[int, ...]) -> None:
    """ValueError if `student` is a spec that cannot take inputs of this shape (else nothing)."""
    if is_arch(student):
        check_input(parse(student), input_shape)


def fits(student: str, input_shape: tuple[int, ...]) -> bool:
    """Whether `student` can take inputs of this shape (`check_student` without the reason)."""
    try:
        check_student(student, input_shape)
    except ValueError:
        return False
    return True
