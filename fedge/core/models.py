"""Model zoo: a teacher per data shape and a small student family (CNN 2-D, CNN 1-D, MLP)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fedge.core import archspec
from fedge.core.choices import STUDENTS, TEACHERS

# Student widths: (conv1 channels, conv2 channels, hidden units). The teacher is far wider.
STUDENT_WIDTHS: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 8, 16),
    "small": (8, 16, 32),
    "medium": (16, 32, 64),
    # Same widths, pooling between the convolutions: the second convolution runs on a quarter
    # of the positions (half for signals), so these are several times cheaper per sample.
    "small-fast": (8, 16, 32),
    "medium-fast": (16, 32, 64),
    # Three convolutions of equal width, pooling after the first two, then straight to the
    # classes: most parameters sit in convolutions that see every position, not in a wide
    # fully connected layer. Far more accurate per parameter on signals (mnist1d).
    "deep-tiny": (8, 8, 8),
    "deep-small": (16, 16, 16),
    "deep-medium": (32, 32, 32),
}
FAST_STUDENTS = ("small-fast", "medium-fast")
DEEP_STUDENTS = ("deep-tiny", "deep-small", "deep-medium")
# Depthwise-separable students (DS-CNN, Zhang et al. 2017 "Hello Edge"; MobileNet's block): a
# full first convolution, then depthwise + pointwise ones, pooling after each; their widths.
SEPARABLE_STUDENTS: dict[str, tuple[int, int, int]] = {
    "ds-tiny": (8, 16, 32),
    "ds-small": (16, 32, 64),
    "ds-medium": (32, 64, 128),
}
TEACHER_WIDTH = (32, 64, 256)  # the teacher of small images (digits) and tabular data
NORM_TEACHER_WIDTH = (32, 64, 128)  # images of 16 x 16 and more (fmnist), signals (mnist1d)


def separable_spec(name: str, input_shape: tuple[int, ...]) -> str:
    """The arch: spec of a separable family student for this input shape."""
    c1, c2, c3 = SEPARABLE_STUDENTS[name]
    if len(input_shape) < 2:
        raise ValueError(f"{name} is a convolutional student: it needs images or signals")
    k = 3 if len(input_shape) == 3 else 5
    return f"arch:c{c1}k{k}p-d{c2}k{k}p-d{c3}k{k}p-relu"


class NormTeacher(nn.Module):
    """Two convolution blocks (convolutions, GroupNorm, ReLU; pooling after each), then an MLP.

    2-D for images (3x3 kernels), 1-D for signals (5-wide).

    GroupNorm normalises within each sample, so every client's model computes the same function
    of its weights: batch statistics (BatchNorm) would differ from client to client under
    non-IID data and make the averaged model's running statistics meaningless. LayerNorm on
    the hidden layer keeps SGD at the run's learning rate (0.05, momentum 0.9) stable: without
    it the wide first linear layer diverged on Fashion-MNIST within an epoch.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: tuple[int, int, int],
        convs_per_block: int = 1,
    ) -> None:
        super().__init__()
        c1, c2, hidden = width
        dims = len(input_shape) - 1
        conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv2d if dims == 2 else nn.Conv1d
        pool: type[nn.MaxPool1d] | type[nn.MaxPool2d] = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
        kernel = 3 if dims == 2 else 5
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for out in (c1, c2):
            for _ in range(convs_per_block):
                layers += [conv(channels, out, kernel, padding=kernel // 2), nn.GroupNorm(8, out)]
                layers.append(nn.ReLU())
                channels = out
            layers.append(pool(2))
        self.features = nn.Sequential(*layers)
        flat = c2 * math.prod(s // 4 for s in input_shape[1:])
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.classifier(torch.flatten(self.features(x), 1))


class ConvNet(nn.Module):
    """Two convolutions, one pooling, two linear layers; 2-D or 1-D by `dims`.

    Flattening uses `torch.flatten` (not nn.Unflatten/view tricks) so that ONNX export and
    onnxruntime's quantization pre-processing stay happy.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        width: tuple[int, int, int],
        pool_early: bool = False,
    ) -> None:
        super().__init__()
        dims = len(input_shape) - 1
        conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv2d if dims == 2 else nn.Conv1d
        pool: type[nn.MaxPool1d] | type[nn.MaxPool2d] = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
        c1, c2, hidden = width
        kernel = 3 if dims == 2 else 5
        first = [conv(input_shape[0], c1, kernel, padding=kernel // 2), nn.ReLU()]
        second = [conv(c1, c2, kernel, padding=kernel // 2), nn.ReLU()]
        layers = [*first, pool(2), *second] if pool_early else [*first, *second, pool(2)]
        self.features = nn.Sequential(*layers)
        flat = c2 * math.prod(s // 2 for s in input_shape[1:])
        self.classifier = nn.Sequential(
            nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.classifier(torch.flatten(self.features(x), 1))


class DeepConvNet(nn.Module):
    """Three convolutions, pooling after the first two, one linear layer; 2-D or 1-D."""

    def __init__(
        self, input_shape: tuple[int, ...], num_classes: int, width: tuple[int, int, int]
    ) -> None:
        super().__init__()
        dims = len(input_shape) - 1
        conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv2d if dims == 2 else nn.Conv1d
        pool: type[nn.MaxPool1d] | type[nn.MaxPool2d] = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
        kernel = 3 if dims == 2 else 5
        channels = (input_shape[0], *width)
        layers: list[nn.Module] = []
        for index in range(3):
            layers += [conv(channels[index], channels[index + 1], kernel, padding=kernel // 2)]
            layers += [nn.ReLU()] + ([pool(2, ceil_mode=True)] if index < 2 else [])
        self.features = nn.Sequential(*layers)
        flat = width[2] * math.prod(math.ceil(math.ceil(s / 2) / 2) for s in input_shape[1:])
        self.classifier = nn.Sequential(nn.Linear(flat, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.classifier(torch.flatten(self.features(x), 1))


class MLP(nn.Module):
    """Two hidden layers for flat (tabular) features."""

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        width: tuple[int, int, int],
        hidden: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        h1, h2 = hidden or (width[2], max(width[2] // 2, 4))
        self.net = nn.Sequential(
            nn.Linear(num_features, h1),
            nn.ReLU(),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.Linear(h2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.net(x)


class ArchNet(nn.Module):
    """A searched architecture (fedge.core.archspec): convolutions, hidden layers, classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, arch: archspec.Arch) -> None:
        super().__init__()
        archspec.check_input(arch, input_shape)
        dims = len(input_shape) - 1
        conv: type[nn.Conv1d] | type[nn.Conv2d] = nn.Conv2d if dims == 2 else nn.Conv1d
        pool: type[nn.MaxPool1d] | type[nn.MaxPool2d] = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
        act: type[nn.Module] = nn.ReLU if arch.activation == "relu" else nn.Hardswish
        layers: list[nn.Module] = []
        channels = input_shape[0]
        for layer in arch.convs:
            width, kernel, stride = layer.width, layer.kernel, 2 if layer.strided else 1
            if layer.separable:  # depthwise, then pointwise: one bias, one activation
                depthwise = conv(
                    channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False
                )
                layers += [nn.Sequential(depthwise, conv(channels, width, 1)), act()]
            else:
                layers += [conv(channels, width, kernel, stride, kernel // 2), act()]
            layers += [pool(2, ceil_mode=True)] if layer.pooled else []
            channels = width
        self.features = nn.Sequential(*layers)
        positions = math.prod(_halved(s, arch.convs) for s in input_shape[1:])
        features = channels * positions if arch.convs else math.prod(input_shape)
        head: list[nn.Module] = []
        for units in arch.hidden:
            head += [nn.Linear(features, units), act()]
            features = units
        self.classifier = nn.Sequential(*head, nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.classifier(torch.flatten(self.features(x), 1))


def _halved(size: int, convs: tuple[archspec.Conv, ...]) -> int:
    """A spatial size after the convolutions' strides and poolings (each rounds up)."""
    for layer in convs:
        size = math.ceil(size / 2**layer.halvings)
    return size


def build_model(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: tuple[int, int, int],
    pool_early: bool = False,
    deep: bool = False,
) -> nn.Module:
    """A CNN for images (C, H, W) and signals (C, L), an MLP for flat features (D,)."""
    if len(input_shape) == 1:
        return MLP(input_shape[0], num_classes, width)
    if len(input_shape) in (2, 3):
        if deep:
            return DeepConvNet(input_shape, num_classes, width)
        return ConvNet(input_shape, num_classes, width, pool_early)
    raise ValueError(f"unsupported input shape {input_shape}; allowed: (D,), (C, L), (C, H, W)")


class Linear(nn.Module):
    """Multinomial logistic regression on the flattened input: the teacher for DP training.

    DP noise grows with the number of parameters it must cover; this one has (D + 1) x classes.
    """

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits."""
        return self.fc(torch.flatten(x, 1))


def build_teacher(
    input_shape: tuple[int, ...], num_classes: int, seed: int, kind: str = "cnn"
) -> nn.Module:
    """The federated model, seeded: one seed, one start.

    `cnn`: NormTeacher for signals and images of 16 px and more (on MNIST-1D, IID, 10 clients,
    20 rounds: 93.5 % against the wide ConvNet's 84.8 %), the wide ConvNet for small images
    (digits: its bytes are the default run's) and an MLP for flat features; `linear`; or a
    student architecture, federated directly.
    """
    if kind not in TEACHERS:
        raise ValueError(f"unknown teacher {kind!r}; allowed: {', '.join(TEACHERS)}")
    if kind in STUDENTS:
        return build_student(input_shape, num_classes, kind, seed)
    torch.manual_seed(seed)
    if kind == "linear":
        return Linear(math.prod(input_shape), num_classes)
    if len(input_shape) == 2 or (len(input_shape) == 3 and min(input_shape[1:]) >= 16):
        return NormTeacher(input_shape, num_classes, NORM_TEACHER_WIDTH)
    return build_model(input_shape, num_classes, TEACHER_WIDTH)


def build_student(
    input_shape: tuple[int, ...], num_classes: int, size: str, seed: int
) -> nn.Module:
    """A member of the student family (`tiny`, `small`, `medium`), or a searched `arch:` spec."""
    if size in SEPARABLE_STUDENTS:
        size = separable_spec(size, input_shape)
    if archspec.is_arch(size):
        torch.manual_seed(seed)
        return ArchNet(input_shape, num_classes, archspec.parse(size))
    if size not in STUDENT_WIDTHS:
        raise ValueError(f"unknown student {size!r}; allowed: {', '.join(STUDENT_WIDTHS)}")
    torch.manual_seed(seed)
    return build_model(
        input_shape,
        num_classes,
        STUDENT_WIDTHS[size],
        pool_early=size in FAST_STUDENTS,
        deep=size in DEEP_STUDENTS,
    )


def student_from_weights(
    input_shape: tuple[int, ...], num_classes: int, size: str, weights: dict[str, np.ndarray]
) -> nn.Module:
    """The student family member `size`, with layer widths read from `weights` (pruned or not).

    Structured pruning changes channel and unit counts; a client rebuilds the same module from
    the shapes it receives, then loads the weights.
    """
    if size in SEPARABLE_STUDENTS:
        size = separable_spec(size, input_shape)
    if archspec.is_arch(size):
        spec = archspec.parse(size)
        layers = [k for k in weights if k.endswith(".bias")]  # convolutions, then linear layers
        order = sorted(layers, key=lambda k: (k.split(".")[0] != "features", int(k.split(".")[1])))
        widths = [len(weights[k]) for k in order][:-1]  # the last one is the classifier's
        arch_model = ArchNet(input_shape, num_classes, spec.with_widths(widths))
        set_model_weights(arch_model, weights)
        return arch_model
    if size not in STUDENT_WIDTHS:
        raise ValueError(f"unknown student {size!r}; allowed: {', '.join(STUDENT_WIDTHS)}")
    if len(input_shape) == 1:
        hidden = (len(weights["net.0.bias"]), len(weights["net.2.bias"]))
        model: nn.Module = MLP(input_shape[0], num_classes, STUDENT_WIDTHS[size], hidden)
    else:
        convs = [k for k in weights if k.startswith("features.") and k.endswith(".bias")]
        widths = [len(weights[k]) for k in sorted(convs, key=lambda k: int(k.split(".")[1]))]
        if size in DEEP_STUDENTS:
            model = DeepConvNet(input_shape, num_classes, (widths[0], widths[1], widths[2]))
        else:
            width = (widths[0], widths[1], len(weights["classifier.0.bias"]))
            model = ConvNet(input_shape, num_classes, width, size in FAST_STUDENTS)
    set_model_weights(model, weights)
    return model


def set_model_weights(model: nn.Module, weights: dict[str, np.ndarray]) -> None:
    """Load numpy weights by name (shapes must match)."""
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in weights.items()}
    model.load_state_dict(state, strict=True)


def count_params(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
