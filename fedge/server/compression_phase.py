"""The compression phase: teacher -> distill -> prune -> ONNX -> guarded int8, on the public pool only."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedge.compression.distill import DistillConfig, distill, require_public_pool
from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.compression.prune import PruneConfig, prune
from fedge.compression.quantize import QuantizeConfig, QuantizeResult, quantize
from fedge.core.config import RunConfig
from fedge.core.data import Preprocessing
from fedge.core.io import gzip_size
from fedge.core.models import count_params
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import PublicPool, Split
from fedge.core.training import evaluate

log = logging.getLogger("fedge")


@dataclass(frozen=True)
class CompressionConfig:
    """All stage configs of one compression phase (saved in the bundle manifest)."""

    distill: DistillConfig
    prune: PruneConfig
    export: ExportConfig
    quantize: QuantizeConfig

    @classmethod
    def from_run(cls, cfg: RunConfig) -> CompressionConfig:
        """The stage configs a run's settings describe."""
        return cls(
            distill=DistillConfig(
                student=cfg.student,
                temperature=cfg.kd_temperature,
                epochs=cfg.kd_epochs,
                labels=cfg.kd_labels,
                queries=cfg.kd_queries,
                seed=cfg.seed,
            ),
            prune=PruneConfig(
                ratio=cfg.prune_ratio,
                finetune_epochs=cfg.finetune_epochs,
                temperature=cfg.kd_temperature,
                labels=cfg.kd_labels,
                queries=cfg.kd_queries,
                seed=cfg.seed,
                sparsity=cfg.sparsity,
            ),
            export=ExportConfig(),
            quantize=QuantizeConfig(
                format=cfg.quant_format,
                per_channel=cfg.quant_per_channel,
                tolerance=cfg.int8_tolerance,
                mode=cfg.quant_mode,
                calibration=cfg.quant_calibration,
                calibration_samples=cfg.quant_calibration_samples,
            ),
        )

    def on_fixed_views(self, views: int) -> CompressionConfig:
        """The same phase for a teacher that only knows a fixed transfer set of `views` x the pool.

        No augmentation on the fly (the teacher could not label it), and the epochs divided by
        `views`, so distillation takes as many steps as it would on the pool.
        """

        def fewer(epochs: int) -> int:
            return max(1, round(epochs / views)) if epochs else 0

        off: dict[str, Any] = {"mixup": 0.0, "noise": 0.0, "shift": 0}
        return dataclasses.replace(
            self,
            distill=dataclasses.replace(self.distill, epochs=fewer(self.distill.epochs), **off),
            prune=dataclasses.replace(
                self.prune, finetune_epochs=fewer(self.prune.finetune_epochs), **off
            ),
        )

    def to_json(self) -> dict[str, Any]:
        """Plain dict for results.json and the manifest."""
        return dataclasses.asdict(self)


@dataclass
class CompressionOutcome:
    """What the phase produced: the model to ship and a row per stage."""

    student_bytes: bytes  # the device model: raw input in, logits/probabilities/label out
    quantization: QuantizeResult
    student_params: int
    stages: list[dict[str, Any]] = field(default_factory=list)


def run_compression(
    teacher: nn.Module,
    public_pool: PublicPool,
    val: Split,
    test: Split,
    config: CompressionConfig,
    *,
    preprocessing: Preprocessing,
    num_classes: int,
) -> CompressionOutcome:
    """Compress the teacher into the model devices get.

    Training sees only `public_pool`; `val` decides the int8 guard and checks the device ops;
    `test` is only measured, for the report. The result takes raw input (preprocessing folded
    into the graph) and also outputs probabilities and the label.
    """
    input_shape = preprocessing.input_shape
    student, distilled = distill_stage(
        teacher, public_pool, test, config.distill, input_shape=input_shape, num_classes=num_classes
    )
    pruned, pruned_row = prune_stage(
        student, teacher, public_pool, test, config.prune, input_shape=input_shape
    )
    return package_stage(
        pruned,
        public_pool,
        val,
        test,
        config,
        preprocessing=preprocessing,
        stages=[distilled, pruned_row],
    )


def stage_row(
    name: str, accuracy: float, params: int, size: int, gz: int | None = None
) -> dict[str, Any]:
    """One stage's figures (bytes: raw fp32 weights for torch stages, the file size after)."""
    log.info("stage %-9s accuracy %.4f  params %7d  bytes %8d", name, accuracy, params, size)
    return {"name": name, "accuracy": accuracy, "params": params, "bytes": size, "gzip_bytes": gz}


def distill_stage(
    teacher: nn.Module,
    public_pool: PublicPool,
    test: Split,
    config: DistillConfig,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
) -> tuple[nn.Module, dict[str, Any]]:
    """The distilled student and its stage row."""
    require_public_pool(public_pool)
    log.info(
        "compression: distilling into a %r student on %d public samples",
        config.student,
        len(public_pool),
    )
    student = distill(
        teacher, public_pool, config, input_shape=input_shape, num_classes=num_classes
    )
    params = count_params(student)
    return student, stage_row("distilled", evaluate(student, test.x, test.y)[1], params, 4 * params)


def prune_stage(
    student: nn.Module,
    teacher: nn.Module,
    public_pool: PublicPool,
    test: Split,
    config: PruneConfig,
    *,
    input_shape: tuple[int, ...],
) -> tuple[nn.Module, dict[str, Any]]:
    """A pruned, KD fine-tuned copy of `student` and its stage row."""
    log.info("compression: pruning %.0f %% of channels, then KD fine-tuning", 100 * config.ratio)
    pruned = prune(student, teacher, public_pool, config, input_shape=input_shape)
    params = count_params(pruned)
    return pruned, stage_row("pruned", evaluate(pruned, test.x, test.y)[1], params, 4 * params)


def package_stage(
    pruned: nn.Module,
    public_pool: PublicPool,
    val: Split,
    test: Split,
    config: CompressionConfig,
    *,
    preprocessing: Preprocessing,
    stages: list[dict[str, Any]],
) -> CompressionOutcome:
    """Export `pruned` to ONNX, quantize it under the guard and fold the device ops in."""
    stages = list(stages)
    params = count_params(pruned)
    fp32 = export_onnx(pruned, preprocessing.input_shape, config.export)
    fp32_acc = session_accuracy(make_session(fp32), test.x, test.y)
    stages.append(stage_row("onnx-fp32", fp32_acc, params, len(fp32), gzip_size(fp32)))
    log.info(
        "compression: int8 %s quantization (%s, per-channel=%s, calibration %s)",
        config.quantize.mode,
        config.quantize.format,
        config.quantize.per_channel,
        config.quantize.calibration,
    )
    quant = quantize(fp32, public_pool, val, config.quantize)
    if quant.quantized:
        int8_acc = session_accuracy(make_session(quant.model_bytes), test.x, test.y)
        size = len(quant.model_bytes)
        stages.append(stage_row("int8", int8_acc, params, size, gzip_size(quant.model_bytes)))
    log.info("compression: %s", quant.reason)
    device_model = fold_device_ops(quant.model_bytes, preprocessing, check_x=val.x)
    return CompressionOutcome(device_model, quant, params, stages)
