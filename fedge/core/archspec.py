"""Searched student architectures as a spec string: `arch:c16k3p-c32k3-h64-relu` (torch-free).

A spec lists convolutions (`c<channels>k<kernel>`, `p`: 2x max pooling after it), then
hidden linear layers (`h<units>`), then the activation; the classifier to the classes is
implied. Images and signals take convolutions; flat features only hidden layers. The spec is
the student's name everywhere a student is named (settings, candidates, the bundle manifest),
so a device knows what it runs and a client can rebuild it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "arch:"
ACTIVATIONS = ("relu", "hardswish")
KERNELS = (1, 3, 5, 7)
MAX_LAYERS = 6
MAX_WIDTH = 512
FORMAT = (
    "arch:c<channels>k<kernel>[p]-...-h<units>-...-<activation>, e.g. arch:c16k3p-c32k3-h64-relu"
)
_CONV = re.compile(r"c(\d+)k(\d+)(p?)")
_HIDDEN = re.compile(r"h(\d+)")


@dataclass(frozen=True)
class Arch:
    """Convolutions (channels, kernel, pool after), hidden units, activation."""

    convs: tuple[tuple[int, int, bool], ...]
    hidden: tuple[int, ...]
    activation: str = "relu"

    def __post_init__(self) -> None:
        widths = [c for c, _, _ in self.convs] + list(self.hidden)
        if not 1 <= len(widths) <= MAX_LAYERS:
            raise ValueError(f"an architecture has 1 to {MAX_LAYERS} layers, got {len(widths)}")
        if any(not 1 <= w <= MAX_WIDTH for w in widths):
            raise ValueError(f"layer widths must be in [1, {MAX_WIDTH}], got {widths}")
        if any(k not in KERNELS for _, k, _ in self.convs):
            raise ValueError(f"kernels must be one of {KERNELS}, got {self.convs}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; allowed: {ACTIVATIONS}")

    @property
    def spec(self) -> str:
        """The spec string (`parse(a.spec) == a`)."""
        convs = [f"c{c}k{k}{'p' if p else ''}" for c, k, p in self.convs]
        return PREFIX + "-".join([*convs, *(f"h{h}" for h in self.hidden), self.activation])

    def with_widths(self, widths: list[int]) -> Arch:
        """The same layout with other layer widths (a pruned student's), convolutions first."""
        n = len(self.convs)
        convs = tuple((w, k, p) for w, (_, k, p) in zip(widths[:n], self.convs, strict=True))
        return Arch(convs, tuple(widths[n:]), self.activation)


def is_arch(name: str) -> bool:
    """Whether a student name is a spec rather than a family member."""
    return name.startswith(PREFIX)


def parse(name: str) -> Arch:
    """The architecture a spec names; ValueError naming the spec and the format otherwise."""
    if not is_arch(name):
        raise ValueError(f"not an architecture spec: {name!r}; format: {FORMAT}")
    parts = name[len(PREFIX) :].split("-")
    convs: list[tuple[int, int, bool]] = []
    hidden: list[int] = []
    try:
        *layers, activation = parts
        for part in layers:
            if (conv := _CONV.fullmatch(part)) and not hidden:
                convs.append((int(conv[1]), int(conv[2]), conv[3] == "p"))
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
    pools = sum(p for _, _, p in arch.convs)
    if len(input_shape) > 1 and min(input_shape[1:]) < 2**pools:
        raise ValueError(f"{arch.spec}: {pools} poolings shrink input {input_shape} to nothing")


def check_student(student: str, input_shape: tuple[int, ...]) -> None:
    """ValueError if `student` is a spec that cannot take inputs of this shape (else nothing)."""
    if is_arch(student):
        check_input(parse(student), input_shape)
