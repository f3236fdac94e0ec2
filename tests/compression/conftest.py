"""Fixtures the device-target tests share: the default student as shipped, and a signed bundle."""

from pathlib import Path

import pytest

from fedge.compression.bundle import BundleConfig, generate_keypair, load_private_key, make_bundle
from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.compression.quantize import quantize_int8
from fedge.compression.weights import weight_only_int8
from fedge.core.models import build_student
from fedge.core.training import train
from tests.compression.configs import SHAPE, STATIC


@pytest.fixture(scope="module")
def trained_fp32(digits_fed) -> bytes:
    """The default student trained on the clients' data, exported to fp32 ONNX."""
    student = build_student(SHAPE, 10, "deep-small", seed=0)
    train(
        student, digits_fed.client_x, digits_fed.client_y, epochs=8, lr=0.05, batch_size=32, seed=0
    )
    return export_onnx(student.eval(), SHAPE, ExportConfig())


@pytest.fixture(scope="module")
def shipped(digits_fed, trained_fp32) -> bytes:
    """The default student as a run ships it: trained, int8 QDQ, raw input and label folded in."""
    int8 = quantize_int8(trained_fp32, digits_fed.server.public_pool, STATIC)
    return fold_device_ops(int8, digits_fed.dataset.preprocessing, digits_fed.server.val.x)


@pytest.fixture(scope="module")
def shipped_weights(digits_fed, trained_fp32) -> bytes:
    """The same student as `quant-mode weights` ships it (int8 weights, float activations)."""
    int8 = weight_only_int8(trained_fp32)
    return fold_device_ops(int8, digits_fed.dataset.preprocessing, digits_fed.server.val.x)


@pytest.fixture()
def signed_bundle(tmp_path, shipped) -> tuple[Path, Path]:
    """A bundle directory of the shipped model and the public key it is signed with."""
    private, public = generate_keypair(tmp_path / "keys")
    config = BundleConfig(
        model_id="test",
        version=1,
        input_name="input",
        input_shape=(None, *SHAPE),
        output_name="logits",
        probabilities_name="probabilities",
        label_name="label",
        preprocessing={"input_shape": list(SHAPE), "in_model": True, "scale": 0.0625},
        labels=tuple(range(10)),
        metrics={},
        compression={},
        quantized=True,
    )
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name, data in make_bundle(shipped, config, load_private_key(private)).items():
        (bundle / name).write_bytes(data)
    return bundle, public
