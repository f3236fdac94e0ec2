"""The compression chain as data: an ordered sequence of stages, each one config and one verb.

teacher -> distill -> prune -> federate -> export -> quantize -> qat -> device -> minify.
The run, the sweep, `fedge compress` and the audit's shadow pipelines all walk STAGES with
`compress`; a sweep passes a cache so that points agreeing on a prefix of stage configs share
its work. Each stage config builds itself from the run's settings (`from_run`, beside its
dataclass). Adding a stage = one config dataclass with `from_run`, one verb (verbs.py), one
entry in STAGES and its field in CompressionConfig.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, Self, TypeVar

from torch import nn

from fedge.compression.distill import DistillConfig, require_public_pool
from fedge.compression.export import DeviceConfig, ExportConfig
from fedge.compression.minify import MinifyConfig
from fedge.compression.prune import PruneConfig
from fedge.compression.qat import QATConfig
from fedge.compression.quantize import QuantizeConfig, QuantizeResult
from fedge.core.config import RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.models import count_params
from fedge.core.plain import from_plain, to_plain
from fedge.core.training import torch_threads
from fedge.pipeline.chain.verbs import (
    run_device,
    run_distill,
    run_export,
    run_federate,
    run_minify,
    run_prune,
    run_qat,
    run_quantize,
)
from fedge.pipeline.chain.work import Inputs, Work, stage_row
from fedge.pipeline.outputs.rows import StageRow, StudentRounds

__all__ = [
    "STAGES",
    "CompressionConfig",
    "CompressionOutcome",
    "Inputs",
    "Stage",
    "Work",
    "compress",
    "stage_row",
]


class StageConfig(Protocol):
    """What every stage config has: it builds itself from the run's settings."""

    @classmethod
    def from_run(cls, cfg: RunConfig) -> Self:
        """The stage's settings as the run's settings describe them."""
        ...


C = TypeVar("C", bound=StageConfig)


@dataclass(frozen=True)
class Stage(Generic[C]):
    """One step of the chain: its config class (built by `from_run`) and its verb."""

    name: str  # also the CompressionConfig field that holds its config
    config: type[C]
    apply: Callable[[Work, C, Inputs], Work]


STAGES: tuple[Stage[Any], ...] = (
    Stage("distill", DistillConfig, run_distill),
    Stage("prune", PruneConfig, run_prune),
    Stage("federate", FederateConfig, run_federate),
    Stage("export", ExportConfig, run_export),
    Stage("quantize", QuantizeConfig, run_quantize),
    Stage("qat", QATConfig, run_qat),
    Stage("device", DeviceConfig, run_device),
    Stage("minify", MinifyConfig, run_minify),
)


@dataclass(frozen=True)
class CompressionConfig:
    """One config per stage of STAGES (saved in results.json and the manifest)."""

    distill: DistillConfig
    prune: PruneConfig
    federate: FederateConfig
    export: ExportConfig
    quantize: QuantizeConfig
    qat: QATConfig
    device: DeviceConfig
    minify: MinifyConfig

    @classmethod
    def from_run(cls, cfg: RunConfig) -> CompressionConfig:
        """The stage configs a run's settings describe."""
        return cls(**{stage.name: stage.config.from_run(cfg) for stage in STAGES})

    @classmethod
    def from_json(cls, data: Any) -> CompressionConfig:
        """Inverse of to_json (a manifest's or results.json's compression block).

        ValueError naming the stage and field that is missing, unknown or of the wrong type.
        """
        return from_plain(cls, data, "compression config")

    @property
    def configs(self) -> tuple[Any, ...]:
        """The stage configs in STAGES order."""
        return tuple(getattr(self, stage.name) for stage in STAGES)

    def through(self, name: str) -> tuple[Any, ...]:
        """The configs of the stages up to and including `name` (what its output depends on)."""
        names = [stage.name for stage in STAGES]
        return self.configs[: names.index(name) + 1]

    def on_fixed_views(self, views: int) -> CompressionConfig:
        """The same chain for a teacher that only knows a fixed transfer set of `views` x the pool.

        No augmentation on the fly (the teacher could not label it), and the epochs divided by
        `views`, so distillation takes as many steps as it would on the pool.
        """

        def fewer(epochs: int) -> int:
            return max(1, round(epochs / views)) if epochs else 0

        distill, prune = self.distill, self.prune
        return dataclasses.replace(
            self,
            distill=dataclasses.replace(
                distill, epochs=fewer(distill.epochs), kd=distill.kd.without_augmentation()
            ),
            prune=dataclasses.replace(
                prune,
                finetune_epochs=fewer(prune.finetune_epochs),
                kd=prune.kd.without_augmentation(),
            ),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain dict for results.json and the manifest: stage name -> its settings."""
        return {stage.name: to_plain(getattr(self, stage.name)) for stage in STAGES}


@dataclass
class CompressionOutcome:
    """What the chain produced: the model to ship and a row per stage."""

    student_bytes: bytes  # the device model: raw input in, logits/probabilities/label out
    quantization: QuantizeResult
    student_params: int
    stages: list[StageRow] = field(default_factory=list)
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    federated: StudentRounds | None = None  # the student's federated rounds, if any


def compress(
    config: CompressionConfig,
    inputs: Inputs,
    cache: dict[tuple[Any, ...], Work] | None = None,
    stages: tuple[Stage[Any], ...] = STAGES,
) -> CompressionOutcome:
    """Walk `stages` with `config`, reusing the work of any common prefix held in `cache`.

    One cache serves calls on the same `inputs` (a sweep's points share distillation, pruning).

    Training sees only the public pool; the validation split decides the int8 guard and checks
    the device ops; the test split is only measured, for the report.
    """
    require_public_pool(inputs.public_pool)
    work = Work()
    with torch_threads(1):  # the same bytes whatever the caller's thread count
        for stage in stages:
            key = config.through(stage.name)
            if cache is not None and key in cache:
                work = cache[key]
                continue
            work = stage.apply(work, getattr(config, stage.name), inputs)
            if cache is not None:
                cache[key] = work
    assert work.onnx is not None and work.quantization is not None and work.model is not None
    return CompressionOutcome(
        student_bytes=work.onnx,
        quantization=work.quantization,
        student_params=count_params(work.model),
        stages=list(work.rows),
        models=dict(work.models),
        federated=work.federated,
    )
