"""Structured pruning stage: physically remove channels/units (torch-pruning), then KD fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

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
    seed: int = 0  # batch order

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError(f"prune ratio must be in [0, 1), got {self.ratio}")


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
    if config.ratio == 0:
        return model
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
        )
    return model.eval()
