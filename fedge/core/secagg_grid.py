"""SecAgg+'s integer grid for a run: what is masked, its range, its levels, the modulus, the wire dtype.

Two modes. Uncompressed updates mask the trained model itself on a fine grid (2^22 levels over
[-8, 8] by default, as Flower's SecAgg+). `update-compression int8` masks the update instead
(trained minus received, far smaller than the weights) on the 8-bit grid: 255 levels over
[-clip, clip], quantized (stochastically, by Flower) before it is masked. Either way a masked
value lies in [0, modulus) and is sent in the narrowest unsigned integer that holds it, so
the modulus sets the upload: the smallest power of two above the largest possible sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from fedge.core.sampling import poisson, train_size

if TYPE_CHECKING:
    from fedge.core.config import RunConfig

WEIGHTS_LEVELS = 1 << 22  # secagg-quantization's default, for a masked model
INT8_LEVELS = 255  # 256 values over [-clip, clip]: what an int8 code carries
WEIGHTS_CLIP = 8.0  # |weight share x parameter| of a masked model (Flower's default range)
DELTA_CLIP = 0.5  # |weight share x change| of a masked int8 update
LOSS_CAP = 16.0  # a masked update's training loss is sent as min(loss, cap) / cap x clip


def masks_update(cfg: RunConfig) -> bool:
    """True when nodes mask their update (int8), False when they mask the trained model."""
    return cfg.update_compression == "int8"


def levels(cfg: RunConfig) -> int:
    """Integer levels over [-clip, clip]: 255 for int8 updates, else secagg-quantization."""
    return INT8_LEVELS if masks_update(cfg) else cfg.secagg_quantization


def clip(cfg: RunConfig) -> float:
    """secagg-clip, or the mode's default range (a model's weights, or an update's)."""
    if cfg.secagg_clip:
        return float(cfg.secagg_clip)
    return DELTA_CLIP if masks_update(cfg) else WEIGHTS_CLIP


def most_clients(cfg: RunConfig) -> int:
    """The most updates one round can sum (all clients under Poisson sampling)."""
    return cfg.clients if poisson(cfg) else train_size(cfg)


def modulus(cfg: RunConfig) -> int:
    """secagg-modulus, or the smallest power of two above the largest sum a round can make."""
    if cfg.secagg_modulus:
        return int(cfg.secagg_modulus)
    return 1 << (most_clients(cfg) * levels(cfg)).bit_length()


def wire_dtype(mod: int) -> np.dtype:
    """The narrowest unsigned integer type that holds every value in [0, mod)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if mod - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)
