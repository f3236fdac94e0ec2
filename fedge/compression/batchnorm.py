"""Training-time BatchNorm for a student's convolutions, folded into their weights afterwards."""

from __future__ import annotations

import torch
from torch import nn

Conv = nn.Conv1d | nn.Conv2d


def _output_conv(layer: nn.Module) -> Conv | None:
    """The convolution whose outputs `layer` produces, if `layer` is a convolution (or pair)."""
    if isinstance(layer, Conv):
        return layer
    if isinstance(layer, nn.Sequential) and len(layer) and isinstance(layer[-1], Conv):
        return layer[-1]
    return None


class _Normed(nn.Module):
    """A convolution (or a depthwise-pointwise pair) followed by BatchNorm over its outputs."""

    def __init__(self, inner: nn.Module, channels: int, dims: int) -> None:
        super().__init__()
        self.inner = inner
        self.norm = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution's output, normalized."""
        return self.norm(self.inner(x))

    def folded(self) -> nn.Module:
        """`inner` with the normalization's running statistics and affine folded into it."""
        norm, conv = self.norm, _output_conv(self.inner)
        assert norm.running_var is not None and norm.running_mean is not None
        assert conv is not None and conv.bias is not None  # what with_batchnorm wraps
        scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
        with torch.no_grad():
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
            conv.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias.detach())
        return self.inner


def _features(model: nn.Module) -> nn.Sequential:
    """The model's convolution stack, or an empty one for a model without `features` (an MLP)."""
    features = getattr(model, "features", None)
    return features if isinstance(features, nn.Sequential) else nn.Sequential()


def with_batchnorm(model: nn.Module) -> int:
    """Put BatchNorm after every convolution of `model.features`, in place; how many.

    Only for training on the server (distillation on the public pool, one process), where batch
    statistics are the same data's: `fold_batchnorm` removes them again, so the exported model
    has exactly the architecture's layers and parameter names. A model without `features`
    (an MLP) is left as it is.
    """
    features, count = _features(model), 0
    for index, layer in enumerate(features):
        conv = _output_conv(layer)
        if conv is not None and conv.bias is not None:
            dims = 2 if isinstance(conv, nn.Conv2d) else 1
            features[index] = _Normed(layer, conv.out_channels, dims)
            count += 1
    return count


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm `with_batchnorm` added into its convolution, in place; how many."""
    features, count = _features(model), 0
    for index, layer in enumerate(features):
        if isinstance(layer, _Normed):
            features[index] = layer.folded()
            count += 1
    return count
