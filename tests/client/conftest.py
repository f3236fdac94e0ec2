"""Fixtures for the device runtime: a signed student bundle installed in a model store."""

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key
from fedge.compression.bundle import BundleConfig, generate_keypair, load_private_key, make_bundle
from fedge.compression.export import ExportConfig, export_onnx, fold_device_ops
from fedge.core.data import Preprocessing, load_dataset
from fedge.core.models import build_student

PREP = Preprocessing(shift=0.0, scale=1 / 16, input_shape=(1, 8, 8))


def bundle_config(version: int = 1) -> BundleConfig:
    return BundleConfig(
        model_id="test",
        version=version,
        input_name="input",
        input_shape=(None, 1, 8, 8),
        output_name="logits",
        probabilities_name="probabilities",
        label_name="label",
        preprocessing={**PREP.to_json(), "in_model": True},
        labels=tuple(range(10)),
        metrics={},
        compression={},
        quantized=False,
    )


def device_model(size: str = "small") -> tuple[bytes, bytes]:
    """(exported student, the same as shipped to devices: preprocessing and label in the graph)."""
    exported = export_onnx(build_student((1, 8, 8), 10, size, seed=0), (1, 8, 8), ExportConfig())
    check_x = PREP.apply(load_dataset("digits").x[:64])
    return exported, fold_device_ops(exported, PREP, check_x=check_x)


@dataclass
class Device:
    store: Path
    public_key: Path
    private_key: Ed25519PrivateKey
    model_bytes: bytes  # the shipped (folded) model

    def install(self, version: int, model_bytes: bytes | None = None) -> None:
        files = make_bundle(
            model_bytes or self.model_bytes, bundle_config(version), self.private_key
        )
        ModelStore(self.store).install(files, load_public_key(self.public_key))


@pytest.fixture(scope="session")
def student_models() -> tuple[bytes, bytes]:
    return device_model()


@pytest.fixture(scope="session")
def student_onnx(student_models) -> bytes:
    """The exported student, before the device ops are folded in."""
    return student_models[0]


@pytest.fixture()
def device(tmp_path, student_models) -> Device:
    private_path, public_path = generate_keypair(tmp_path / "keys")
    dev = Device(
        tmp_path / "model-store", public_path, load_private_key(private_path), student_models[1]
    )
    dev.install(1)
    return dev


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    """The tiny student as shipped to devices (the bundle tests' model)."""
    return device_model("tiny")[1]


@pytest.fixture()
def keys(tmp_path):
    """A fresh (private key, public key) pair, written under tmp_path/keys."""
    private_path, public_path = generate_keypair(tmp_path / "keys")
    return load_private_key(private_path), load_public_key(public_path)
