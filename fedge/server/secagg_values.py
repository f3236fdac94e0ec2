"""What the server makes of SecAgg+'s unmasked sum: the survivors' mean, as one update."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract
from flwr.common.secure_aggregation.quantization import dequantize

from fedge.core import messages as m
from fedge.core import secagg_grid as sg
from fedge.core.config import RunConfig
from fedge.server.validation import Checked

Vector = list[np.ndarray]


class SecAggError(RuntimeError):
    """A round the protocol cannot finish (too few nodes or shares): the reason is the text."""


def survivors_mean(cfg: RunConfig, total: Vector, survivors: int) -> Vector:
    """The weighted mean of the survivors' vectors, from their unmasked sum.

    The last value is the mean training loss (sent scaled into the clip range when the
    nodes masked their int8 update, see `fedge.client.secagg`).
    """
    clip, levels = sg.clip(cfg), sg.levels(cfg)
    weight, summed = factor_extract(total)
    if weight == 0:
        raise SecAggError("secagg: the survivors' total weight is 0")
    values = dequantize(summed, clip, levels)
    shift = (survivors - 1) * clip  # each survivor's values were shifted by clip
    scale = levels / weight
    mean = [(v - shift) * scale for v in values]
    if sg.masks_update(cfg):
        mean[-1] = mean[-1] * sg.LOSS_CAP / clip
    return mean


def as_update(
    cfg: RunConfig,
    reference: dict[str, np.ndarray],
    values: Vector,
    kind: str,
    survivors: list[int],
) -> Checked:
    """The secure mean as the one update the strategy aggregates (weight 1, and how many).

    When the nodes masked their int8 update, the mean update goes onto the model they received.
    """
    if sg.masks_update(cfg):
        values = [
            np.asarray(w, dtype=np.float64).ravel() + v.ravel()
            for w, v in zip(reference.values(), values, strict=False)
        ] + values[len(reference) :]
    arrays = {
        name: Array(np.asarray(value, dtype=reference[name].dtype).reshape(reference[name].shape))
        for name, value in zip(reference, values[:-1], strict=True)
    }
    counts = {m.NUM_EXAMPLES: 1, m.UNIT_WEIGHT: 1, m.CONTRIBUTORS: len(survivors)}
    metrics = MetricRecord({**counts, m.TRAIN_LOSS: float(values[-1][0])})
    content = RecordDict({m.ARRAYS: ArrayRecord(arrays), m.METRICS: metrics})
    reply = Message(content, dst_node_id=survivors[0], message_type=kind)
    return Checked(reply, node_id=survivors[0], partition_id=-1, norm=0.0)
