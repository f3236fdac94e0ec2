"""Update compression: decode(encode(x)) within the stated error; error feedback."""

import numpy as np
import pytest

from fedge.core.codec import Codec, decode, decode_int8, encode, roundtrip, unvarint, varint


@pytest.fixture
def update(rng):
    return {
        "conv.weight": rng.normal(size=(8, 1, 3, 3)).astype(np.float32),
        "fc.bias": rng.normal(size=(10,)).astype(np.float32),
        "steps": np.array([3], dtype=np.int64),
    }


def test_int8_is_within_half_a_step_deterministic_and_one_step_stochastic(update, rng):
    for stochastic, bound in ((False, 0.5), (True, 1.0)):
        encoded, decoded = roundtrip(update, Codec("int8", stochastic=stochastic), rng)
        assert encoded["conv.weight|q"].dtype == np.int8
        for name in ("conv.weight", "fc.bias"):
            step = np.abs(update[name]).max() / 127
            assert np.abs(decoded[name] - update[name]).max() <= bound * step * 1.0001
        np.testing.assert_array_equal(decoded["steps"], update["steps"])  # not floating: as is


def test_stochastic_rounding_is_unbiased(rng):
    x = {"w": np.full(20_000, 0.3049, dtype=np.float32)}
    x["w"][0] = 1.27  # scale 0.01: 0.3049 lies between steps 30 and 31
    _, decoded = roundtrip(x, Codec("int8", stochastic=True), rng)
    assert abs(decoded["w"][1:].mean() - 0.3049) < 2e-4  # deterministic gives 0.30


def test_topk_keeps_exactly_the_largest_entries(update, rng):
    encoded, decoded = roundtrip(update, Codec("topk", ratio=0.25), rng)
    flat, out = update["conv.weight"].reshape(-1), decoded["conv.weight"].reshape(-1)
    kept = np.flatnonzero(out)
    assert len(kept) == 18 and encoded["conv.weight|i"].dtype == np.uint8
    assert np.abs(flat[kept]).min() >= np.abs(np.delete(flat, kept)).max()
    np.testing.assert_array_equal(out[kept], flat[kept])


def test_topk_int8_is_smaller_than_a_twentieth(rng):
    big = {"w": rng.normal(size=(256, 512)).astype(np.float32)}
    encoded, decoded = roundtrip(big, Codec("topk+int8", ratio=0.01), rng)
    assert big["w"].nbytes / sum(v.nbytes for v in encoded.values()) > 20
    kept = np.flatnonzero(decoded["w"])
    step = np.abs(big["w"].reshape(-1)[kept]).max() / 127
    assert np.abs(decoded["w"].reshape(-1)[kept] - big["w"].reshape(-1)[kept]).max() <= step


def test_error_feedback_sends_what_was_left_out_later(rng):
    codec = Codec("topk", ratio=0.1)
    delta = {"w": rng.normal(size=100).astype(np.float32)}

    def ten_rounds(feedback: bool) -> tuple[np.ndarray, np.ndarray]:
        residual, sent = np.zeros(100, np.float32), np.zeros(100, np.float32)
        for _ in range(10):  # the same update every round
            carried = {"w": delta["w"] + (residual if feedback else 0)}
            _, decoded = roundtrip(carried, codec, rng)
            residual, sent = carried["w"] - decoded["w"], sent + decoded["w"]
        return sent, residual

    sent, residual = ten_rounds(feedback=True)
    np.testing.assert_allclose(sent + residual, 10 * delta["w"], rtol=1e-5, atol=1e-5)
    without, _ = ten_rounds(feedback=False)
    assert np.count_nonzero(without) == 10  # always the same ten entries
    assert np.count_nonzero(sent) > 50  # the residual lets the others through


def test_malformed_encodings_are_refused(update, rng):
    encoded = encode(update, Codec("topk+int8", ratio=0.5), rng)
    shapes = {k: v.shape for k, v in update.items()}
    broken = {**encoded, "fc.bias|i": np.array([0, 99], dtype=np.uint8)}
    with pytest.raises(ValueError, match="indices do not fit"):
        decode(broken, shapes, Codec("topk+int8", ratio=0.5))
    missing = {k: v for k, v in encoded.items() if k != "conv.weight|s"}
    with pytest.raises(ValueError, match="missing encoded part"):
        decode(missing, shapes, Codec("topk+int8", ratio=0.5))
    with pytest.raises(ValueError, match="unknown update compression"):
        Codec("zip")


def test_the_int8_downlink_decodes_without_shapes(update, rng):
    encoded = encode(update, Codec("int8", stochastic=False), rng)
    decoded = decode_int8(encoded)
    assert {k: v.shape for k, v in decoded.items()} == {k: v.shape for k, v in update.items()}


def test_nan_updates_are_not_encoded_and_empty_tensors_pass(rng):
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode({"w": np.array([1.0, np.nan], np.float32)}, Codec("int8"), rng)
    empty = {"w": np.zeros((0, 3), np.float32), "b": np.ones(4, np.float32)}
    _, decoded = roundtrip(empty, Codec("topk+int8", ratio=0.5), rng)
    assert decoded["w"].shape == (0, 3) and decoded["b"].shape == (4,)


def test_varint_gaps_take_one_byte_below_128_and_bad_bytes_are_refused(rng):
    values = np.concatenate(
        (rng.integers(0, 127, 500), [0, 1, 127, 128, 16383, 16384, 2**40, 2**63 - 1])
    )
    data = varint(values)
    np.testing.assert_array_equal(unvarint(data), values)
    assert data.dtype == np.uint8 and data.size == 500 + 1 + 1 + 1 + 2 + 2 + 3 + 6 + 9
    with pytest.raises(ValueError, match="truncated"):
        unvarint(data[:-1])  # the last number's final byte
    with pytest.raises(ValueError, match="longer than 63 bits"):
        unvarint(np.array([0xFF] * 10 + [1], dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        unvarint(data.astype(np.int64))


def test_a_tensor_sent_unencoded_must_have_its_exact_shape_and_dtype():
    """An int64 (1,) for a float weight would broadcast into every weight: refused."""
    from fedge.core.codec import Codec, decode

    shapes, dtypes = {"w": (3, 2)}, {"w": np.dtype(np.float32)}
    with pytest.raises(
        ValueError, match=r"w: int64 \(1,\) sent as it is, expected float32 \(3, 2\)"
    ):
        decode({"w": np.array([7], np.int64)}, shapes, Codec("int8"), dtypes)
    steps = {"n": (1,)}
    with pytest.raises(ValueError, match="sent as it is"):
        decode({"n": np.array([1, 2], np.int64)}, steps, Codec("int8"), {"n": np.dtype(np.int64)})
    assert decode({"n": np.array([5], np.int64)}, steps, Codec("int8"))["n"].tolist() == [5]


def test_top_k_index_bytes_are_bounded_by_the_values_before_decoding():
    """16 MB of index bytes for one value is refused before anything is allocated for it."""
    from fedge.core.codec import Codec, decode

    encoded = {
        "w|i": np.zeros(16_000_000, np.uint8),
        "w|v": np.zeros(1, np.float32),
    }
    with pytest.raises(ValueError, match="16000000 index bytes for 1 values"):
        decode(encoded, {"w": (4,)}, Codec("topk"))
    with pytest.raises(ValueError, match="float64 values part"):
        decode({"w|i": np.zeros(1, np.uint8), "w|v": np.zeros(1)}, {"w": (4,)}, Codec("topk"))
