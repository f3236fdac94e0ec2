"""What the compression stages share: their inputs, the work handed on, a stage's table row."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from torch import nn

from fedge.compression.quantize import QuantizeResult
from fedge.compression.resources import measured
from fedge.core.data import Preprocessing
from fedge.core.io import gzip_size
from fedge.core.models import count_params
from fedge.core.partition import PublicPool, Split
from fedge.core.training import evaluate
from fedge.pipeline.chain.federate import FederatedTrainer
from fedge.pipeline.outputs.rows import StageRow, StudentRounds

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
    federated: FederatedTrainer | None = None  # runs student rounds on clients (or replays them)


@dataclass(frozen=True)
class Work:
    """What one stage hands the next (stages return a new Work; none mutates its input)."""

    model: nn.Module | None = None  # the torch student (distill, prune)
    onnx: bytes | None = None  # from export on: the ONNX model as it stands
    quantization: QuantizeResult | None = None
    rows: tuple[StageRow, ...] = ()  # one per stage that reports figures
    models: tuple[tuple[str, nn.Module], ...] = ()  # each torch stage's model (for the audit)
    federated: StudentRounds | None = None  # what the student's federated rounds did


def stage_row(
    name: str, accuracy: float, params: int, size: int, gz: int | None = None
) -> StageRow:
    """One stage's figures (bytes: raw fp32 weights for torch stages, the file size after)."""
    log.info("stage %-9s accuracy %.4f  params %7d  bytes %8d", name, accuracy, params, size)
    return StageRow(name, accuracy, params, size, gz)


def onnx_row(name: str, accuracy: float, params: int, model: bytes) -> StageRow:
    """The row of a stage that made an ONNX model: its file, gzip size and device resources."""
    row = stage_row(name, accuracy, params, len(model), gzip_size(model))
    return dataclasses.replace(row, resources=measured(model, f"stage {name}"))


def torch_row(name: str, model: nn.Module, test: Split) -> StageRow:
    """The row of a torch stage: test accuracy, parameters, raw fp32 bytes."""
    params = count_params(model)
    return stage_row(name, evaluate(model, test.x, test.y)[1], params, 4 * params)
