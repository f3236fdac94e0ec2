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

WEIGHTS_LEVELS = 1 << 22  # secagg-quantization 0's levels, for a masked model
INT8_LEVELS = 255  # 256 values over [-clip, clip]: what an int8 code carries
WEIGHTS_CLIP = 8.0  # |weight share x parameter| of a masked model (Flower's default range)
DELTA_CLIP = 0.5  # |weight share x change| of a masked int8 update
LOSS_CAP = 16.0  # a masked update's training loss is sent as min(loss, cap) / cap x clip


def masks_update(cfg: RunConfig) -> bool:
    """True when nodes mask their update (int8), False when they mask the trained model."""
    return cfg.update_compression == "int8"


def levels(cfg: RunConfig) -> int:
    """Integer levels over [-clip, clip]: 255 for int8 updates, else secagg-quantization."""
    if masks_update(cfg):
        return INT8_LEVELS
    return cfg.secagg_quantization or WEIGHTS_LEVELS


def clip(cfg: RunConfig) -> float:
    """secagg-clip, or the mode's default range (a model's weights, or an update's)."""
    if cfg.secagg_clip:
        return float(cfg.secagg_clip)
    return DELTA_CLIP if masks_update(cfg) else WEIGHTS_CLIP


def most_clients(cfg: RunConfig) -> int:
    """The most updates one round can sum (all clients under Poisson sampling)."""
    return cfg.clients if poisson(cfg) else train_size(cfg)


def modulus(cfg: RunConfig, nodes: int | None = None) -> int:
    """secagg-modulus, or the smallest power of two above the largest sum a round can make.

    `nodes`: how many a round asks (their vectors are what is summed); default: the most
    clients a round of this configuration samples. ValueError if a set modulus cannot hold
    their sum.
    """
    most = most_clients(cfg) if nodes is None else nodes
    if not cfg.secagg_modulus:
        return 1 << (most * levels(cfg)).bit_length()
    if most * levels(cfg) >= cfg.secagg_modulus:
        raise ValueError(
            f"secagg-modulus={cfg.secagg_modulus} cannot hold the sum of {most} nodes' values of "
            f"up to {levels(cfg)} levels: allowed secagg-modulus > {most * levels(cfg)}, or 0 "
            "(the smallest power of two that does)"
        )
    return int(cfg.secagg_modulus)


def wire_dtype(mod: int) -> np.dtype:
    """The narrowest unsigned integer type that holds every value in [0, mod)."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if mod - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)
