"""The compression chain as data: an ordered sequence of stages, each one config and one verb.

teacher -> distill -> prune -> federate -> export -> quantize -> qat -> device -> minify.
The run, the sweep, `fedge compress` and the audit's shadow pipelines all walk STAGES with
`compress`; a sweep passes a cache so that points agreeing on a prefix of stage configs share
its work. Adding a stage = one config dataclass, one function here, one entry in STAGES.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedge.compression.distill import DistillConfig, require_public_pool
from fedge.compression.export import DeviceConfig, ExportConfig
from fedge.compression.kd import KDConfig
from fedge.compression.minify import MinifyConfig
from fedge.compression.prune import PruneConfig
from fedge.compression.qat import QATConfig
from fedge.compression.quantize import QuantizeConfig, QuantizeResult
from fedge.core.config import RunConfig
from fedge.core.models import count_params
from fedge.core.training import torch_threads
from fedge.pipeline.chain.federate import FederateConfig
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

__all__ = [
    "STAGES",
    "CompressionConfig",
    "CompressionOutcome",
    "Inputs",
    "Work",
    "compress",
    "stage_row",
]


@dataclass(frozen=True)
class Stage:
    """One step of the chain: its config from the run's settings, and its verb."""

    name: str
    configure: Callable[[RunConfig], Any]
    apply: Callable[[Work, Any, Inputs], Work]


def kd_config(cfg: RunConfig) -> KDConfig:
    """The KD settings distillation and pruning's fine-tuning share."""
    return KDConfig(
        temperature=cfg.kd_temperature,
        labels=cfg.kd_labels,
        queries=cfg.kd_queries,
        seed=cfg.seed,
        sample_budget=cfg.kd_sample_budget,
    )


STAGES: tuple[Stage, ...] = (
    Stage(
        "distill",
        lambda cfg: DistillConfig(
            student=cfg.student,
            epochs=0 if cfg.distill_from == "federated" else cfg.kd_epochs,
            kd=kd_config(cfg),
        ),
        run_distill,
    ),
    Stage(
        "prune",
        lambda cfg: PruneConfig(
            ratio=cfg.prune_ratio,
            sparsity=cfg.sparsity,
            finetune_epochs=cfg.finetune_epochs,
            kd=kd_config(cfg),
        ),
        run_prune,
    ),
    Stage(
        "federate",
        lambda cfg: FederateConfig(
            student=cfg.student,
            rounds=cfg.student_rounds if cfg.distill_from != "public" else 0,
            epochs=cfg.student_epochs,
            lr=cfg.student_lr,
            alpha=cfg.kd_alpha,
            temperature=cfg.kd_temperature,
            soft=cfg.kd_labels == "soft",
            batch_size=cfg.batch_size,
        ),
        run_federate,
    ),
    Stage("export", lambda cfg: ExportConfig(), run_export),
    Stage(
        "quantize",
        lambda cfg: QuantizeConfig(
            mode=cfg.quant_mode,
            format=cfg.quant_format,
            per_channel=cfg.quant_per_channel,
            calibration=cfg.quant_calibration,
            calibration_samples=cfg.quant_calibration_samples,
            tolerance=cfg.int8_tolerance,
        ),
        run_quantize,
    ),
    Stage(
        "qat",
        lambda cfg: QATConfig(
            mode=cfg.qat,
            epochs=cfg.qat_epochs,
            # The teacher is the fp32 student itself: its own probabilities (temperature 1) on
            # views of the pool, which say nothing about members it did not already say.
            kd=dataclasses.replace(
                kd_config(cfg), labels="soft", queries="augmented", temperature=1.0
            ),
            static=cfg.quant_mode == "static",
            tolerance=cfg.int8_tolerance,
        ),
        run_qat,
    ),
    Stage("device", lambda cfg: DeviceConfig(), run_device),
    Stage("minify", lambda cfg: MinifyConfig(), run_minify),
)


@dataclass(frozen=True)
class CompressionConfig:
    """One config per stage of STAGES, in order (saved in results.json and the manifest)."""

    configs: tuple[Any, ...]

    @classmethod
    def from_run(cls, cfg: RunConfig) -> CompressionConfig:
        """The stage configs a run's settings describe."""
        return cls(tuple(stage.configure(cfg) for stage in STAGES))

    def __getitem__(self, name: str) -> Any:
        """The config of the stage called `name`."""
        for stage, config in zip(STAGES, self.configs, strict=True):
            if stage.name == name:
                return config
        raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")

    def on_fixed_views(self, views: int) -> CompressionConfig:
        """The same chain for a teacher that only knows a fixed transfer set of `views` x the pool.

        No augmentation on the fly (the teacher could not label it), and the epochs divided by
        `views`, so distillation takes as many steps as it would on the pool.
        """

        def fewer(epochs: int) -> int:
            return max(1, round(epochs / views)) if epochs else 0

        def change(config: Any) -> Any:
            if isinstance(config, DistillConfig):
                kd = config.kd.without_augmentation()
                return dataclasses.replace(config, epochs=fewer(config.epochs), kd=kd)
            if isinstance(config, PruneConfig):
                kd = config.kd.without_augmentation()
                return dataclasses.replace(
                    config, finetune_epochs=fewer(config.finetune_epochs), kd=kd
                )
            return config

        return CompressionConfig(tuple(change(c) for c in self.configs))

    def to_json(self) -> dict[str, Any]:
        """Plain dict for results.json and the manifest: stage name -> its settings."""
        return {
            stage.name: dataclasses.asdict(config)
            for stage, config in zip(STAGES, self.configs, strict=True)
        }


@dataclass
class CompressionOutcome:
    """What the chain produced: the model to ship and a row per stage."""

    student_bytes: bytes  # the device model: raw input in, logits/probabilities/label out
    quantization: QuantizeResult
    student_params: int
    stages: list[dict[str, Any]] = field(default_factory=list)
    models: dict[str, nn.Module] = field(default_factory=dict, repr=False)
    federated: dict[str, Any] | None = None  # the student's federated rounds, if any


def compress(
    config: CompressionConfig, inputs: Inputs, cache: dict[tuple[Any, ...], Work] | None = None
) -> CompressionOutcome:
    """Walk STAGES with `config`, reusing the work of any common prefix held in `cache`.

    One cache serves calls on the same `inputs` (a sweep's points share distillation, pruning).

    Training sees only the public pool; the validation split decides the int8 guard and checks
    the device ops; the test split is only measured, for the report.
    """
    require_public_pool(inputs.public_pool)
    work = Work()
    with torch_threads(1):  # the same bytes whatever the caller's thread count
        for depth, (stage, stage_config) in enumerate(zip(STAGES, config.configs, strict=True)):
            key = config.configs[: depth + 1]
            if cache is not None and key in cache:
                work = cache[key]
                continue
            work = stage.apply(work, stage_config, inputs)
            if cache is not None:
                cache[key] = work
    assert work.onnx is not None and work.quantization is not None and work.model is not None
    return CompressionOutcome(
        student_bytes=work.onnx,
        quantization=work.quantization,
        student_params=count_params(work.model),
        stages=[dict(row) for row in work.rows],
        models=dict(work.models),
        federated=work.federated,
    )
