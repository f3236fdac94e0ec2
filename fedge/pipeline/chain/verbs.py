"""The verbs of the compression stages: each takes the work so far, its config and the inputs."""

from __future__ import annotations

import copy
import dataclasses
import logging

from fedge.compression.distill import DistillConfig, distill, require_public_pool
from fedge.compression.export import DeviceConfig, ExportConfig, export_onnx, fold_device_ops
from fedge.compression.minify import MinifyConfig, minify
from fedge.compression.prune import PruneConfig, prune
from fedge.compression.qat import QATConfig, quantize_with_qat
from fedge.compression.quantize import QuantizeConfig, quantize
from fedge.core.config import ConfigError
from fedge.core.federate import FederateConfig
from fedge.core.models import count_params
from fedge.core.ort import make_session, session_accuracy
from fedge.core.training import evaluate
from fedge.pipeline.chain.work import Inputs, Work, onnx_row, torch_row

log = logging.getLogger("fedge")


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
    row = torch_row("distilled", student, inputs.test)
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
    row = (
        torch_row("pruned", model, inputs.test)
        if config.active
        else dataclasses.replace(work.rows[-1], name="pruned")
    )
    return dataclasses.replace(
        work, model=model, rows=(*work.rows, row), models=(*work.models, ("pruned", model))
    )


def run_federate(work: Work, config: FederateConfig, inputs: Inputs) -> Work:
    """Rounds of student training on the clients' own data (KD to the teacher + labels)."""
    assert work.model is not None
    if config.rounds == 0:
        return work
    if inputs.federated is None:
        raise ConfigError("kd-source federated/both needs clients; allowed here: kd-source public")
    log.info(
        "federated distillation: %d rounds x %d epochs (alpha %.2f)",
        config.rounds,
        config.epochs,
        config.alpha,
    )
    model, summary = inputs.federated(copy.deepcopy(work.model), config)
    if summary.replayed_from:  # fedge compress, the audit: the clients are gone
        log.info("federated distillation: the run's rounds, replayed (%s)", summary.replayed_from)
    before = evaluate(work.model, inputs.val.x, inputs.val.y)[1]
    after = evaluate(model, inputs.val.x, inputs.val.y)[1]
    summary = dataclasses.replace(
        summary, validation_before=before, validation_after=after, kept=after >= before
    )
    if after < before:  # the rounds' cost is spent; the student they made is not shipped
        log.warning(
            "federated distillation lowered validation accuracy %.4f -> %.4f: its student is "
            "discarded, the student goes on as it was before the rounds",
            before,
            after,
        )
        return dataclasses.replace(work, federated=summary)
    row = torch_row("federated", model, inputs.test)
    return dataclasses.replace(
        work,
        model=model,
        rows=(*work.rows, row),
        models=(*work.models, ("federated", model)),
        federated=summary,
    )


def run_export(work: Work, config: ExportConfig, inputs: Inputs) -> Work:
    """The student as an fp32 ONNX model."""
    assert work.model is not None
    fp32 = export_onnx(work.model, inputs.preprocessing.input_shape, config)
    accuracy = session_accuracy(make_session(fp32), inputs.test.x, inputs.test.y)
    row = onnx_row("onnx-fp32", accuracy, count_params(work.model), fp32)
    return dataclasses.replace(work, onnx=fp32, rows=(*work.rows, row))


def run_quantize(work: Work, config: QuantizeConfig, inputs: Inputs) -> Work:
    """int8 under the validation guard (or fp32, with the reason)."""
    assert work.onnx is not None and work.model is not None
    if config.mode == "none":
        log.info("quantization: none requested (quant-mode none); the student ships fp32")
    else:
        what = {
            "static": f" ({config.format}, calibration {config.calibration})",
            "weights": " (Conv/Gemm/MatMul weights, dequantized when the model loads)",
            "dynamic": " (MatMul weights)",
        }
        log.info(
            "quantization: %s int8%s, per-channel=%s",
            config.mode,
            what[config.mode],
            config.per_channel,
        )
    quant = quantize(work.onnx, inputs.public_pool, inputs.val, config)
    rows = work.rows
    if quant.quantized:
        model = quant.model_bytes
        accuracy = session_accuracy(make_session(model), inputs.test.x, inputs.test.y)
        params = count_params(work.model)
        rows = (*rows, onnx_row("int8", accuracy, params, model))
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
        rows = (*rows, onnx_row("int8-qat", accuracy, count_params(work.model), model))
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
