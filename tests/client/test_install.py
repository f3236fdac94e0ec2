"""install_and_load and the install-time measurements: one verification, one device check, a timer
that is injected, not monkeypatched."""

import numpy as np
import pytest

from fedge.client.runtime.devicecheck import check_device_model
from fedge.client.runtime.install import accuracy, install_and_load, install_latency_us
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError
from fedge.compression.bundle import make_bundle
from fedge.core.data import load_dataset
from fedge.core.manifest import Manifest
from tests.client.conftest import bundle_config

DIGITS = load_dataset("digits")


class NoReadBack(ModelStore):
    """A store that fails the test if the installed bundle is read back and verified again."""

    def load(self, trusted_key):
        raise AssertionError("the installed bundle was read back from the store")


def _checks(calls: list):
    def check(model_bytes: bytes, manifest: Manifest, runtime: str = "onnx") -> None:
        calls.append(manifest.version)
        check_device_model(model_bytes, manifest, runtime=runtime)

    return check


def test_install_verifies_once_and_serves_the_bundle_it_verified(device, tmp_path):
    files = make_bundle(device.model_bytes, bundle_config(4), device.private_key)
    calls = []
    deployed = install_and_load(
        NoReadBack(tmp_path / "store"), device.public_key, files, device_check=_checks(calls)
    )
    assert deployed.changed and calls == [4] and deployed.predictor.version == 4
    predicted = deployed.predictor.predict(DIGITS.x[:50]).labels
    assert np.array_equal(predicted, device_predictions(device.store, device.public_key))
    assert ModelStore(tmp_path / "store").current_version() == 4


def device_predictions(store, key) -> np.ndarray:
    """The same model served the ordinary way: opened on a store, verified from disk."""
    from fedge.client.runtime.predictor import Predictor

    return Predictor(store, key, warmup=0).predict(DIGITS.x[:50]).labels


def test_a_re_delivery_serves_the_installed_copy_without_a_device_check(device):
    files = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    install_and_load(ModelStore(device.store), device.public_key, files)
    calls = []
    again = install_and_load(
        ModelStore(device.store), device.public_key, files, device_check=_checks(calls)
    )
    assert not again.changed and again.predictor.version == 2 and calls == []


def test_the_predictor_of_an_install_picks_up_later_versions(device):
    files = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    predictor = install_and_load(ModelStore(device.store), device.public_key, files).predictor
    device.install(3)
    assert predictor.reload_if_newer() and predictor.version == 3


def test_an_unreadable_key_is_a_recorded_refusal(device, tmp_path):
    files = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    (tmp_path / "bad.pub").write_text("not a key")
    store = ModelStore(device.store)
    with pytest.raises(BundleError) as err:
        install_and_load(store, tmp_path / "bad.pub", files)
    assert err.value.check == "trusted-key"
    refusal = store.status()["last_refusal"]
    assert refusal["check"] == "trusted-key" and refusal["claimed_version"] == 2
    assert store.current_version() == 1


def test_latency_is_timed_on_the_sample_or_on_zeros_by_the_injected_timer(device):
    files = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    predictor = install_and_load(ModelStore(device.store), device.public_key, files).predictor
    seen = {}

    def timer(calls):
        seen.update({name: call() for name, call in calls.items()})
        return {name: 1.5 for name in calls}

    assert install_latency_us(predictor, DIGITS.x[:1], timer=timer) == {"onnx": 1.5, "predict": 1.5}
    assert seen["predict"].labels.tolist() == predictor.predict(DIGITS.x[:1]).labels.tolist()
    install_latency_us(predictor, timer=timer)  # no sample: a zero sample of the model's shape
    zeros = predictor.predict(np.zeros((1, 64)))
    assert np.array_equal(seen["predict"].probabilities, zeros.probabilities)
    assert accuracy(predictor, DIGITS.x[:50], DIGITS.y[:50]) == float(
        (predictor.predict(DIGITS.x[:50]).labels == DIGITS.y[:50]).mean()
    )
