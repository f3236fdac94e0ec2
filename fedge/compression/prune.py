"""Pruning stage: remove channels/units (torch-pruning), optional magnitude sparsity, KD fine-tuning."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune as torch_prune

from fedge.compression.distill import require_public_pool
from fedge.compression.kd import KDConfig, kd_train
from fedge.core.config import RunConfig
from fedge.core.partition import PublicPool


@dataclass(frozen=True)
class PruneConfig:
    """How to prune (built from the run's settings; see fedge.pipeline.chain.stages)."""

    ratio: float  # share of channels/hidden units removed from every prunable layer (prune-ratio)
    sparsity: float  # unstructured: share of conv/linear weights zeroed by magnitude (sparsity)
    finetune_epochs: int  # KD epochs after pruning, on the public pool (finetune-epochs)
    kd: KDConfig  # the same KD settings as distillation
    lr: float = 0.003  # Adam learning rate for fine-tuning

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ValueError(f"prune ratio must be in [0, 1), got {self.ratio}")
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")

    @classmethod
    def from_run(cls, cfg: RunConfig) -> PruneConfig:
        """Structured pruning, magnitude sparsity and KD fine-tuning as the run sets them."""
        return cls(
            ratio=cfg.prune_ratio,
            sparsity=cfg.sparsity,
            finetune_epochs=cfg.finetune_epochs,
            kd=KDConfig.from_run(cfg),
        )

    @property
    def active(self) -> bool:
        """Whether this stage changes the model at all."""
        return self.ratio > 0 or self.sparsity > 0


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
            model, teacher, public_pool.x, config.kd, epochs=config.finetune_epochs, lr=config.lr
        )
