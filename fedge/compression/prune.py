"""Pruning stage: remove channels/units (torch-pruning), optional magnitude sparsity, KD fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from fedge.compression.distill import require_public_pool
from fedge.compression.kd import kd_train
from fedge.core.partition import PublicPool


@dataclass(frozen=True)
class PruneConfig:
    """How to prune."""

    ratio: float = 0.3  # share of channels/hidden units removed from every prunable layer
    finetune_epochs: int = 60  # KD epochs after pruning, on the public pool
    temperature: float = 4.0  # KD temperature for fine-tuning
    lr: float = 0.003  # Adam learning rate for fine-tuning
    batch_size: int = 64  # public-pool batch size
    mixup: float = 0.4  # as in DistillConfig
    noise: float = 0.05  # as in DistillConfig
    shift: int = 1  # random shift of up to this many pixels/steps (images and signals)
    labels: str = "soft"  # soft | hard (see kd_train)
    queries: str = "augmented"  # augmented | pool (see kd_train)
    seed: int = 0  # batch order
    sparsity: float = 0.0  # unstructured: share of conv/linear weights zeroed by magnitude

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError(f"prune ratio must be in [0, 1), got {self.ratio}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")


def prune(
    student: nn.Module,
    teacher: nn.Module,
    public_pool: PublicPool,
    config: PruneConfig,
    *,
    input_shape: tuple[int, ...],
) -> nn.Module:
    """Return a pruned copy of `student` (fewer parameters, same outputs shape), KD fine-tuned."""
    require_public_pool(public_pool)
    model = copy.deepcopy(student).eval()
    if config.ratio > 0:
        _remove_channels(model, teacher, public_pool, config, input_shape)
    if config.sparsity > 0:
        _zero_smallest(model, teacher, public_pool, config)
    return model.eval()


def _zero_smallest(
    model: nn.Module, teacher: nn.Module, public_pool: PublicPool, config: PruneConfig
) -> None:
    """Unstructured magnitude pruning: the smallest weights become zeros.

    The globally smallest `sparsity` share of conv/linear weights is masked, kept masked through
    KD fine-tuning, then made permanent.

    The tensors keep their shapes: this shrinks the compressed (gzip) size of the file, not the
    raw file or the latency.
    """
    layers = [
        (m, "weight") for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)
    ]
    torch_prune.global_unstructured(
        layers, pruning_method=torch_prune.L1Unstructured, amount=config.sparsity
    )
    _finetune(model, teacher, public_pool, config)
    for module, name in layers:
        torch_prune.remove(module, name)


def _remove_channels(
    model: nn.Module,
    teacher: nn.Module,
    public_pool: PublicPool,
    config: PruneConfig,
    input_shape: tuple[int, ...],
) -> None:
    """Structured pruning in place: channels and hidden units physically removed."""
    example = torch.zeros(1, *input_shape)
    output_layers = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.BasePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=config.ratio,
        ignored_layers=output_layers,  # the class count must not change
        # torch-pruning 1.6 shares these dict defaults between pruners: pass fresh ones.
        in_channel_groups={},
        out_channel_groups={},
        num_heads={},
    )
    pruner.step()
    _finetune(model, teacher, public_pool, config)


def _finetune(
    model: nn.Module, teacher: nn.Module, public_pool: PublicPool, config: PruneConfig
) -> None:
    if config.finetune_epochs:
        kd_train(
            model,
            teacher,
            public_pool.x,
            epochs=config.finetune_epochs,
            temperature=config.temperature,
            lr=config.lr,
            batch_size=config.batch_size,
            seed=config.seed,
            mixup=config.mixup,
            noise=config.noise,
            shift=config.shift,
            labels=config.labels,
            queries=config.queries,
        )
