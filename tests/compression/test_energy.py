"""The energy estimate: its arithmetic, the traffic it counts, and a profile's own coefficients."""

import pytest

from fedge.compression.energy import DEFAULT, EnergyModel
from fedge.compression.resources import Resources, measure
from tests.client.conftest import device_model


def test_the_estimate_is_macs_and_traffic_times_the_coefficients():
    used = Resources(
        params=10, macs=1_000_000, flash_bytes=5000, arena_bytes=2000, traffic_bytes=8000
    )
    assert DEFAULT.microjoules(used, int8=True) == pytest.approx((1e6 * 0.23 + 8000 * 1.25) / 1e6)
    assert DEFAULT.microjoules(used, int8=False) == pytest.approx((1e6 * 4.6 + 8000 * 1.25) / 1e6)
    assert DEFAULT.microjoules(Resources(1, 1, 1, 1), int8=True) is None  # traffic not measured
    assert "Horowitz" in DEFAULT.source


def test_traffic_counts_the_weights_once_and_each_activation_per_use():
    _, model = device_model("tiny")
    used = measure(model)
    assert used.traffic_bytes > used.arena_bytes  # every buffer moves; the arena is one peak
    assert used.traffic_bytes > 4 * used.params  # fp32 weights are read once, at least
    bigger = measure(device_model("small")[1])
    assert bigger.traffic_bytes > used.traffic_bytes and bigger.macs > used.macs


def test_a_profile_brings_its_own_coefficients():
    own = EnergyModel.from_device({"energy": {"pj_per_mac_int8": 0.5, "source": "datasheet X"}})
    assert own.pj_per_mac_int8 == 0.5 and own.pj_per_byte == DEFAULT.pj_per_byte
    assert own.source == "datasheet X" and EnergyModel.from_device({}) == DEFAULT
    for bad in ({"energy": 3}, {"energy": {"pj_per_byte": -1}}, {"energy": {"pj_per_byte": "1"}}):
        with pytest.raises(ValueError, match="device.energy"):
            EnergyModel.from_device(bad)


def test_a_fused_quantize_dequantize_pair_moves_no_extra_bytes():
    """x (graph input) -> Q -> DQ -> Relu -> y: the int8 buffer is written once and read once."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from fedge.compression.resources import at_batch_one, traffic_bytes

    n = 64
    scale = numpy_helper.from_array(np.array(0.1, dtype=np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"]),
            helper.make_node("Relu", ["dq"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])],
        [scale, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    weights = 4 + 1  # the scale and the zero point
    # Q reads x (4n) and writes q (n); DQ is fused (nothing); Relu reads q (n) and writes y (4n)
    assert traffic_bytes(at_batch_one(model)) == weights + 4 * n + n + n + 4 * n
