"""Stage configs the compression tests share (what a run's settings would build)."""

from fedge.compression.quantize import QuantizeConfig

SHAPE = (1, 8, 8)
# Static int8 as `quant-mode static` builds it: QDQ, per-channel weights, min-max calibration.
STATIC = QuantizeConfig(
    mode="static",
    format="qdq",
    per_channel=True,
    calibration="minmax",
    calibration_samples=256,
    tolerance=0.01,
)
