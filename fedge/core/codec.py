"""Compressed model updates: int8 quantization and top-k sparsification of named arrays.

An encoded update is again a dict of named numpy arrays (so it travels in an ordinary Flower
ArrayRecord): for a tensor `w`, `w|q` (int8 values) and `w|s` (float32 scale) for int8;
`w|i` (the gaps between sorted flat indices, as LEB128 varint bytes: one byte per gap below 128)
and `w|v` (values: float32, or int8 with `w|s` when combined) for top-k. `decode` needs the original shapes.
Error feedback (Seide et al. 2014; Karimireddy et al. 2019) is the caller's: add the residual
before encoding and keep `x - decode(encode(x))` for the next round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedge.core.choices import UPDATE_CODECS
from fedge.core.config import RunConfig

SEP = "|"


@dataclass(frozen=True)
class Codec:
    """How updates are compressed: mode, top-k's kept share, int8 rounding."""

    mode: str = "none"
    ratio: float = 0.1
    stochastic: bool = True

    def __post_init__(self) -> None:
        if self.mode not in UPDATE_CODECS:
            raise ValueError(f"unknown update compression {self.mode!r}; allowed: {UPDATE_CODECS}")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"top-k ratio must be in (0, 1], got {self.ratio}")

    @property
    def int8(self) -> bool:
        """Whether values are int8-quantized."""
        return "int8" in self.mode

    @property
    def topk(self) -> bool:
        """Whether only the largest entries are sent."""
        return "topk" in self.mode


def of_run(cfg: RunConfig) -> Codec:
    """The uplink codec a run's settings ask for."""
    return Codec(cfg.update_compression, cfg.topk_ratio, cfg.update_rounding == "stochastic")


def delta_codec(cfg: RunConfig) -> Codec:
    """How a delta downlink is coded: the update codec, rounded deterministically."""
    return Codec(cfg.update_compression, cfg.topk_ratio, stochastic=False)


def advance(view: dict[str, np.ndarray], decoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The next view: floating tensors plus their decoded change, the others as sent.

    Server and client mod both call it: the same operations give the same bits on both sides.
    """
    return {
        k: (v + decoded[k]).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else decoded[k]
        for k, v in view.items()
    }


def _quantize(
    x: np.ndarray, stochastic: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-tensor int8: q in [-127, 127], x ~ q x scale."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    scale = np.float32(peak / 127 if peak > 0 else 1.0)
    scaled = x.astype(np.float64) / scale
    # stochastic rounding is unbiased: E[q] = x / scale
    q = np.floor(scaled + rng.random(scaled.shape)) if stochastic else np.rint(scaled)
    return np.clip(q, -127, 127).astype(np.int8), np.array([scale], dtype=np.float32)


def varint(values: np.ndarray) -> np.ndarray:
    """Non-negative integers as LEB128 bytes (7 bits a byte, high bit: more bytes follow)."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    sizes = np.ones(v.shape, dtype=np.int64)
    for bits in range(7, 64, 7):
        sizes += v >= (np.uint64(1) << np.uint64(bits))
    owner = np.repeat(np.arange(v.size), sizes)
    pos = (np.arange(owner.size) - (np.cumsum(sizes) - sizes)[owner]).astype(np.uint64)
    low = (v[owner] >> (np.uint64(7) * pos)) & np.uint64(0x7F)
    more = pos < (sizes[owner] - 1).astype(np.uint64)
    return (low | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8)


def unvarint(data: np.ndarray) -> np.ndarray:
    """The integers `varint` wrote (int64). ValueError on a truncated or overlong number."""
    b = np.asarray(data).reshape(-1)
    if b.dtype != np.uint8:
        raise ValueError(f"varint bytes must be uint8, got {b.dtype}")
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] & 0x80:
        raise ValueError("truncated varint")
    last = (b & 0x80) == 0
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    owner = np.cumsum(last) - last
    pos = np.arange(b.size) - starts[owner]
    if pos.max() > 8:  # 9 bytes hold 63 bits
        raise ValueError("varint longer than 63 bits")
    parts = (b & 0x7F).astype(np.uint64) << (np.uint64(7) * pos.astype(np.uint64))
    return np.add.reduceat(parts, starts).astype(np.int64)


def encode(
    arrays: dict[str, np.ndarray], codec: Codec, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """The encoded form of `arrays` (floating tensors; others pass unchanged)."""
    if codec.mode == "none":
        return dict(arrays)
    out: dict[str, np.ndarray] = {}
    for name, x in arrays.items():
        if SEP in name:
            raise ValueError(f"array name {name!r} contains {SEP!r}")
        if not np.issubdtype(x.dtype, np.floating) or x.size == 0:
            out[name] = x  # integers, and empty tensors, as they are
            continue
        if not np.isfinite(x).all():
            raise ValueError(f"{name}: the update has NaN or Inf values")
        values = x  # int8 alone keeps the tensor's shape (decode_int8 needs no shapes)
        if codec.topk:
            flat = x.reshape(-1)
            k = max(1, int(np.ceil(codec.ratio * flat.size)))
            keep = np.sort(np.argpartition(np.abs(flat), flat.size - k)[flat.size - k :])
            out[name + SEP + "i"] = varint(np.diff(keep, prepend=0))  # sorted: small gaps
            values = flat[keep]
        if codec.int8:
            out[name + SEP + "q"], out[name + SEP + "s"] = _quantize(values, codec.stochastic, rng)
        else:
            out[name + SEP + "v"] = values.astype(np.float32)
    return out


def decode(
    encoded: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    codec: Codec,
    dtypes: dict[str, np.dtype] | None = None,
) -> dict[str, np.ndarray]:
    """Dense float32 arrays of the given shapes from `encode`'s output.

    ValueError on a missing or malformed part (a reply that does not decode is rejected). A
    tensor passed through unencoded must have exactly its shape (and its dtype, when `dtypes`
    gives them): nothing is broadcast. Every part's size is checked against the shape before
    anything is allocated for it.
    """
    if codec.mode == "none":
        return dict(encoded)
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name in encoded:  # passed through unchanged: only what is not floating
            out[name] = _plain(encoded[name], name, shape, (dtypes or {}).get(name))
            continue
        size = int(np.prod(shape))
        if codec.int8:
            q, scale = _part(encoded, name, "q"), _part(encoded, name, "s")
            if q.dtype != np.int8 or scale.shape != (1,) or scale.dtype != np.float32:
                raise ValueError(f"{name}: malformed int8 part")
            if q.size > size or not np.isfinite(scale).all():
                raise ValueError(f"{name}: malformed int8 part")
            values = q.astype(np.float32) * scale[0]
        else:
            raw = _part(encoded, name, "v")
            if raw.dtype != np.float32 or raw.size > size:
                raise ValueError(f"{name}: {raw.dtype} values part of {raw.size} for {size}")
            values = raw.astype(np.float32)
        if codec.topk:
            gaps = _part(encoded, name, "i")
            if gaps.dtype != np.uint8 or gaps.ndim != 1 or gaps.size > 9 * max(values.size, 1):
                raise ValueError(f"{name}: {gaps.size} index bytes for {values.size} values")
            idx = np.cumsum(unvarint(gaps))
            if idx.shape != values.shape or (idx.size and (idx.min() < 0 or idx.max() >= size)):
                raise ValueError(f"{name}: top-k indices do not fit its shape {shape}")
            dense = np.zeros(size, dtype=np.float32)
            dense[idx] = values
            values = dense
        if values.size != size:
            raise ValueError(f"{name}: {values.size} values for shape {shape}")
        out[name] = values.reshape(shape)
    return out


def _plain(
    value: np.ndarray, name: str, shape: tuple[int, ...], dtype: np.dtype | None
) -> np.ndarray:
    """A tensor sent as it is: not floating, exactly its shape and (if known) its dtype."""
    plain = np.asarray(value)
    if np.issubdtype(plain.dtype, np.floating) and plain.size:
        raise ValueError(f"{name}: a floating tensor that was not encoded")
    if plain.shape != tuple(shape) or (dtype is not None and plain.dtype != dtype):
        raise ValueError(
            f"{name}: {plain.dtype} {plain.shape} sent as it is, expected {dtype} {shape}"
        )
    return plain


def decode_int8(encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Decode an int8-only encoding (shapes travel with it): the downlink's model."""
    shapes = {
        key[: -len(SEP + "q")]: tuple(value.shape)
        for key, value in encoded.items()
        if key.endswith(SEP + "q")
    }
    plain = {k: v for k, v in encoded.items() if SEP not in k}
    decoded = decode(encoded, shapes, Codec("int8", stochastic=False))
    return {**plain, **decoded}


def _part(encoded: dict[str, np.ndarray], name: str, part: str) -> np.ndarray:
    key = name + SEP + part
    if key not in encoded:
        raise ValueError(f"{name}: missing encoded part {key!r}")
    return np.asarray(encoded[key])


def roundtrip(
    arrays: dict[str, np.ndarray], codec: Codec, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(encoded, what the receiver decodes): the sender keeps the second for error feedback."""
    encoded = encode(arrays, codec, rng)
    shapes = {k: tuple(v.shape) for k, v in arrays.items()}
    return encoded, decode(encoded, shapes, codec)
