"""The compression chain as data: an ordered sequence of stages, each one config and one verb.

teacher -> distill -> prune -> export -> quantize -> device model -> minify, public pool only.
The run, the sweep, `fedge compress` and the audit's shadow pipelines all walk STAGES with
`compress`; a sweep passes a cache so that points agreeing on a prefix of stage configs share
its work. Adding a stage = one config dataclass, one function here, one entry in STAGES.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedge.compression.distill import DistillConfig, distill, require_public_pool
from fedge.compression.export import DeviceConfig, ExportConfig, export_onnx, fold_device_ops
from fedge.compression.kd import KDConfig
from fedge.compression.minify import MinifyConfig, minify
from fedge.compression.prune import PruneConfig, prune
from fedge.compression.qat import QATConfig, quantize_with_qat
from fedge.compression.quantize import QuantizeConfig, QuantizeResult, quantize
from fedge.core.config import RunConfig
from fedge.core.data import Preprocessing
from fedge.core.io import gzip_size
from fedge.core.models import count_params
from fedge.core.ort import make_session, session_accuracy
from fedge.core.partition import PublicPool, Split
from fedge.core.training import evaluate, torch_threads

log = logging.getLogger("fedge")


@dataclass(frozen=True)
class Inputs:
    """What every stage may read: the teacher and the server's own data (never client data)."""

    teacher: nn.Module
    public_pool: PublicPool  # the only data a stage trains on
    val: Split  # guards and checks (int8 guard, device ops)
    test: Split  # measured for the report only
    preprocessing: Preprocessing
    num_classes: int


@dataclass(frozen=True)
class Work:
    """What one stage hands the next (stages return a new Work; none mutates its input)."""

    model: nn.Module | None = None  # the torch student (distill, prune)
    onnx: bytes | None = None  # from export on: the ONNX model as it stands
    quantization: QuantizeResult | None = None
    rows: tuple[dict[str, Any], ...] = ()  # one per stage that reports figures
    models: tuple[tuple[str, nn.Module], ...] = ()  # each torch stage's model (for the audit)


@dataclass(frozen=True)
class Stage:
    """One step of the chain: its config from the run's settings, and its verb."""

    name: str
    configure: Callable[[RunConfig], Any]
    apply: Callable[[Work, Any, Inputs], Work]


def kd_config(cfg: RunConfig) -> KDConfig:
    """The KD settings distillation and pruning's fine-tuning share."""
    return KDConfig(
        temperature=cfg.kd_temperature, labels=cfg.kd_labels, queries=cfg.kd_queries, seed=cfg.seed
    )


def stage_row(
    name: str, accuracy: float, params: int, size: int, gz: int | None = None
) -> dict[str, Any]:
    """One stage's figures (bytes: raw fp32 weights for torch stages, the file size after)."""
    log.info("stage %-9s accuracy %.4f  params %7d  bytes %8d", name, accuracy, params, size)
    return {"name": name, "accuracy": accuracy, "params": params, "bytes": size, "gzip_bytes": gz}


def _torch_row(name: str, model: nn.Module, test: Split) -> dict[str, Any]:
    params = count_params(model)
    return stage_row(name, evaluate(model, test.x, test.y)[1], params, 4 * params)


def run_distill(work: Work, config: DistillConfig, inputs: Inputs) -> Work:
    """A new student trained by KD from the teacher on the public pool."""
    pool = require_public_pool(inputs.public_pool)
    log.info(
        "distilling a %r student for %d epochs on %d public samples (%s labels, %s queries)",
        config.student,
        config.epochs,
        len(pool),
        config.kd.labels,
        config.kd.queries,
    )
    shape = inputs.preprocessing.input_shape
    student = distill(
        inputs.teacher, pool, config, input_shape=shape, num_classes=inputs.num_classes
    )
    row = _torch_row("distilled", student, inputs.test)
    return Work(model=student, rows=(row,), models=(("distilled", student),))


def run_prune(work: Work, config: PruneConfig, inputs: Inputs) -> Work:
    """A pruned, KD fine-tuned copy of the student (the same model when the stage is off)."""
    assert work.model is not None
    if config.active:
        log.info(
            "pruning %.0f %% of channels and %.0f %% of weights, then %d KD fine-tuning epochs",
            100 * config.ratio,
            100 * config.sparsity,
            config.finetune_epochs,
        )
        shape = inputs.preprocessing.input_shape
        model = prune(work.model, inputs.teacher, inputs.public_pool, config, input_shape=shape)
    else:
        log.info("pruning skipped (prune-ratio 0, sparsity 0)")
        model = work.model
    row = _torch_row("pruned", model, inputs.test) if config.active else {**work.rows[-1]}
    row["name"] = "pruned"
    return dataclasses.replace(
        work, model=model, rows=(*work.rows, row), models=(*work.models, ("pruned", model))
    )


def run_export(work: Work, config: ExportConfig, inputs: Inputs) -> Work:
    """The student as an fp32 ONNX model."""
    assert work.model is not None
    fp32 = export_onnx(work.model, inputs.preprocessing.input_shape, config)
    accuracy = session_accuracy(make_session(fp32), inputs.test.x, inputs.test.y)
    row = stage_row("onnx-fp32", accuracy, count_params(work.model), len(fp32), gzip_size(fp32))
    return dataclasses.replace(work, onnx=fp32, rows=(*work.rows, row))


def run_quantize(work: Work, config: QuantizeConfig, inputs: Inputs) -> Work:
    """int8 under the validation guard (or fp32, with the reason)."""
    assert work.onnx is not None and work.model is not None
    if config.mode == "none":
        log.info("quantization: none requested (quant-mode none); the student ships fp32")
    else:
        log.info(
            "quantization: %s int8%s, per-channel=%s",
            config.mode,
            f" ({config.format}, calibration {config.calibration})"
            if config.mode == "static"
            else " (MatMul weights)",
            config.per_channel,
        )
    quant = quantize(work.onnx, inputs.public_pool, inputs.val, config)
    rows = work.rows
    if quant.quantized:
        model = quant.model_bytes
        accuracy = session_accuracy(make_session(model), inputs.test.x, inputs.test.y)
        params = count_params(work.model)
        rows = (*rows, stage_row("int8", accuracy, params, len(model), gzip_size(model)))
    if config.mode != "none":
        log.info("quantization: %s", quant.reason)
    return dataclasses.replace(work, onnx=quant.model_bytes, quantization=quant, rows=rows)


def run_qat(work: Work, config: QATConfig, inputs: Inputs) -> Work:
    """Static int8 by quantization-aware training (always, or when post-training int8 lost).

    The same guard as for post-training int8 decides whether it ships.
    """
    quant = work.quantization
    assert quant is not None and work.model is not None
    lost = not quant.quantized and quant.int8_val_accuracy is not None
    if config.mode == "off" or not (config.mode == "always" or lost) or not config.static:
        return work
    log.info("quantization-aware training: %d KD epochs under simulated int8", config.epochs)
    result = quantize_with_qat(
        work.model,
        inputs.teacher,
        inputs.public_pool,
        inputs.val,
        quant,
        config,
        input_shape=inputs.preprocessing.input_shape,
        tolerance=config.tolerance,
    )
    rows = work.rows
    if result.quantized:
        model = result.model_bytes
        accuracy = session_accuracy(make_session(model), inputs.test.x, inputs.test.y)
        size, gz = len(model), gzip_size(model)
        rows = (*rows, stage_row("int8-qat", accuracy, count_params(work.model), size, gz))
    log.info("quantization: %s", result.reason)
    return dataclasses.replace(work, onnx=result.model_bytes, quantization=result, rows=rows)


def run_device(work: Work, config: DeviceConfig, inputs: Inputs) -> Work:
    """The model as devices get it: raw input in, probabilities and label out."""
    assert work.onnx is not None
    device = fold_device_ops(work.onnx, inputs.preprocessing, inputs.val.x, config.atol)
    return dataclasses.replace(work, onnx=device)


def run_minify(work: Work, config: MinifyConfig, inputs: Inputs) -> Work:
    """The device model with short names: fewer bytes, bit-identical outputs."""
    assert work.onnx is not None
    raw_val = inputs.preprocessing.invert(inputs.val.x)
    return dataclasses.replace(work, onnx=minify(work.onnx, config, raw_val))


STAGES: tuple[Stage, ...] = (
    Stage(
        "distill",
        lambda cfg: DistillConfig(student=cfg.student, epochs=cfg.kd_epochs, kd=kd_config(cfg)),
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
            kd=kd_config(cfg),
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
    )
