"""The model store: full manifest validation and the device-model check before a bundle is current;
no rollback by editing CURRENT, a pinned model line, bounded reads, idempotent re-delivery."""

import json
import os
from dataclasses import replace
from functools import partial

import pytest

from fedge.client.runtime.devicecheck import CheckLimits, check_device_model
from fedge.client.runtime.predictor import Predictor
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError, load_public_key, verify_bundle
from fedge.compression.bundle import make_bundle
from tests.client import hostile
from tests.client.conftest import bundle_config


def _resigned(files, private, change) -> dict[str, bytes]:
    """The bundle with its manifest changed by `change(manifest)` and signed again."""
    manifest = json.loads(files["manifest.json"])
    change(manifest)
    out = dict(files)
    out["manifest.json"] = json.dumps(manifest).encode()
    out["manifest.sig"] = private.sign(out["manifest.json"])
    return out


def _set(path: str, value):
    def change(manifest):
        *parents, key = path.split(".")
        target = manifest
        for parent in parents:
            target = target[parent]
        if value is KeyError:
            del target[key]
        else:
            target[key] = value

    return change


BAD_MANIFESTS = {
    "no input_shape": ("preprocessing.input_shape", KeyError, "input_shape"),
    "negative shape": ("preprocessing.input_shape", [-1, 8, 8], "positive integers"),
    "shape of floats": ("preprocessing.input_shape", [1.0, 8, 8], "positive integers"),
    "huge sample": ("preprocessing.input_shape", [1 << 20, 1 << 20], "more than"),
    "labels of strings": ("labels", [str(i) for i in range(10)], "int64"),
    "duplicate labels": ("labels", [0] * 10, "unique"),
    "no labels": ("labels", [], "1 to"),
    "boolean version": ("version", True, "'version' has type bool"),
    "version zero": ("version", 0, "version must be"),
    "empty model_id": ("model_id", "", "model_id"),
    "no input name": ("input.name", KeyError, "input.name"),
    "float64 input": ("input.dtype", "float64", "input.dtype"),
    "shape mismatch": ("input.shape", [None, 64], "does not match"),
    "no label output": ("output.label", None, "output.probabilities and output.label"),
    "not in_model": ("preprocessing.in_model", False, "in_model"),
    "shift of text": ("preprocessing.shift", "abc", "preprocessing.shift"),
    "uppercase sha": ("model_sha256", "A" * 64, "lowercase hex"),
    "tier of capitals": ("tier", "MCU", "tier must be a tier name"),
    "tier as a number": ("tier", 3, "tier must be a tier name"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_a_signed_manifest_the_device_cannot_serve_is_refused(case, device):
    path, value, message = BAD_MANIFESTS[case]
    store = ModelStore(device.store)
    good = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    bad = _resigned(good, device.private_key, _set(path, value))
    with pytest.raises(BundleError, match=message) as err:
        store.install(bad, load_public_key(device.public_key))
    assert err.value.check == "manifest"
    assert store.current_version() == 1 and store.installed_versions() == [1]
    assert Predictor(device.store, device.public_key).version == 1


def test_per_feature_shift_and_scale_are_accepted(device):
    """shift/scale may be one number or one per feature; the device only checks they are finite."""
    good = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    files = _resigned(good, device.private_key, _set("preprocessing.shift", [0.0] * 64))
    files = _resigned(files, device.private_key, _set("preprocessing.scale", [0.0625] * 64))
    ModelStore(device.store).install(files, load_public_key(device.public_key))
    assert ModelStore(device.store).current_version() == 2


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (hostile.slow_model, "did not load and run within 1 s"),
        (hostile.memory_hog_model, "fails on the zeros input"),
    ],
)
def test_the_device_model_check_runs_before_a_bundle_is_current(device, model, message):
    store = ModelStore(device.store)
    files = make_bundle(model(), bundle_config(2), device.private_key)
    with pytest.raises(BundleError, match=message) as err:
        store.install(
            files,
            load_public_key(device.public_key),
            device_check=partial(check_device_model, limits=CheckLimits(timeout_s=1)),
        )
    assert err.value.check == "device-model"
    assert store.current_version() == 1 and store.installed_versions() == [1]


def test_labels_that_do_not_match_the_model_are_refused_by_the_device_check(device):
    files = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    files = _resigned(files, device.private_key, _set("labels", [0, 1, 2]))
    with pytest.raises(
        BundleError,
        match=r"probabilities are float32 \(1, 10\) on the zeros input, not float32 \(1, 3\)",
    ):
        ModelStore(device.store).install(files, load_public_key(device.public_key))


def test_editing_current_back_is_not_served(device):
    device.install(2)
    device.install(3)
    store = ModelStore(device.store)
    predictor = Predictor(device.store, device.public_key, check_interval=0.0)
    (device.store / "CURRENT").write_text("2")  # version 2 is still on disk
    with pytest.raises(BundleError, match="refusing to roll back") as err:
        store.load(load_public_key(device.public_key))
    assert err.value.check == "version"
    assert predictor.predict(hostile.np.zeros((1, 64))).version == 3
    assert "not rolling back" in predictor.last_error
    with pytest.raises(BundleError, match="refusing to roll back"):
        Predictor(device.store, device.public_key)


def test_a_removed_current_is_reported_not_an_older_refusal(device):
    device.install(2)
    predictor = Predictor(device.store, device.public_key, check_interval=0.0)
    (device.store / "CURRENT").write_text("1")  # an older version: refused, and said so
    predictor.predict(hostile.np.zeros((1, 64)))
    assert "not rolling back" in predictor.last_error
    (device.store / "CURRENT").unlink()  # /health must not keep showing the refusal above
    assert predictor.predict(hostile.np.zeros((1, 64))).version == 2
    assert "the store names no current version; serving 2" in predictor.last_error


def test_a_lagging_high_water_mark_is_not_a_rollback(device):
    """An install that stopped between CURRENT and state.json still loads."""
    state = json.loads((device.store / "state.json").read_text())
    device.install(2)
    (device.store / "state.json").write_text(json.dumps(state))  # still says 1
    assert ModelStore(device.store).load(load_public_key(device.public_key)).version == 2


def test_the_model_line_is_pinned_unless_a_switch_is_allowed(device):
    store, key = ModelStore(device.store), load_public_key(device.public_key)
    other = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    other = _resigned(other, device.private_key, _set("model_id", "another-run"))
    with pytest.raises(BundleError, match="'another-run' is not the installed line 'test'") as err:
        store.install(other, key)
    assert err.value.check == "model-line" and store.current_version() == 1
    assert store.install(other, key, allow_model_switch=True).changed
    assert store.status()["model_id"] == "another-run"


def test_a_bundle_for_another_tier_is_refused_and_the_current_model_keeps_serving(device):
    """Every tier shares the release's version: a wrong-tier install would block the right one."""
    store, key = ModelStore(device.store), load_public_key(device.public_key)
    config = bundle_config(2)
    big = make_bundle(device.model_bytes, replace(config, tier="big"), device.private_key)
    small = make_bundle(device.model_bytes, replace(config, tier="small"), device.private_key)
    with pytest.raises(
        BundleError, match="for device tier 'big', this device is tier 'small'"
    ) as err:
        store.install(big, key, tier="small")
    assert err.value.check == "tier"
    assert store.current_version() == 1 and store.installed_versions() == [1]
    assert Predictor(device.store, device.public_key).version == 1
    assert store.status()["last_refusal"]["check"] == "tier"
    assert store.install(small, key, tier="small").changed  # its own tier's, same version
    assert store.load(key).manifest.tier == "small"
    untiered = make_bundle(device.model_bytes, bundle_config(3), device.private_key)
    assert store.install(untiered, key, tier="small").changed  # a bundle for any device
    newer_small = make_bundle(
        device.model_bytes, replace(bundle_config(4), tier="small"), device.private_key
    )
    assert store.install(newer_small, key).changed  # a device naming no tier: any tier first
    newer_big = make_bundle(
        device.model_bytes, replace(bundle_config(5), tier="big"), device.private_key
    )
    with pytest.raises(BundleError, match="for device tier 'big', the installed model for 'small'"):
        store.install(newer_big, key)  # ... then held to the tier it serves
    assert store.install(newer_big, key, allow_model_switch=True).changed


@pytest.mark.parametrize("text", ["²", "9" * 5000, "-1", "", "0", "1e3", "12 34"])
def test_a_corrupt_current_is_a_clean_error(device, text):
    (device.store / "CURRENT").write_text(text)
    with pytest.raises(BundleError, match="CURRENT (is corrupt|has 5000 bytes)") as err:
        ModelStore(device.store).load(load_public_key(device.public_key))
    assert err.value.check == "store"
    (device.store / "versions" / "²").mkdir()
    assert ModelStore(device.store).installed_versions() == [1]


def test_a_symlinked_model_is_refused_unread(device, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as handle:
        handle.truncate(1 << 30)  # sparse: 1 GiB that takes no disk
    model = device.store / "versions" / "1" / "model.onnx"
    model.unlink()
    model.symlink_to(big)
    with pytest.raises(BundleError, match="is a symlink"):
        ModelStore(device.store).load(load_public_key(device.public_key))
    model.unlink()
    os.link(big, model)  # a hard link is a regular file: refused by its size, before reading
    with pytest.raises(BundleError, match=r"has 1073741824 bytes, expected \d+") as err:
        ModelStore(device.store).load(load_public_key(device.public_key))
    assert err.value.check == "size"


def test_a_deeply_nested_signed_manifest_is_refused(device):
    manifest = b"[" * 100_000 + b"]" * 100_000
    files = {
        "model.onnx": device.model_bytes,
        "manifest.json": manifest,
        "manifest.sig": device.private_key.sign(manifest),
    }
    with pytest.raises(BundleError, match="nests too deeply"):
        verify_bundle(files, load_public_key(device.public_key))
    version = device.store / "versions" / "1"
    (version / "manifest.json").write_bytes(manifest)
    (version / "manifest.sig").write_bytes(files["manifest.sig"])
    with pytest.raises(BundleError, match="nests too deeply"):
        ModelStore(device.store).load(load_public_key(device.public_key))


def test_an_oversized_manifest_is_refused_by_its_size(device):
    (device.store / "versions" / "1" / "manifest.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(BundleError, match="more than the 1048576 allowed"):
        ModelStore(device.store).load(load_public_key(device.public_key))


def test_re_delivering_the_current_version_is_an_idempotent_success(device):
    store, key = ModelStore(device.store), load_public_key(device.public_key)
    files = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    assert store.install(files, key).changed
    history = store.status()["history"]
    again = store.install(files, key)
    assert not again.changed and again.bundle.version == 2
    assert store.status()["history"] == history
    resigned = make_bundle(device.model_bytes, bundle_config(2), device.private_key)
    resigned = _resigned(resigned, device.private_key, _set("created", "another time"))
    with pytest.raises(BundleError, match="not newer than installed 2"):
        store.install(resigned, key)


def test_the_last_refusal_is_kept_in_the_store(device):
    store = ModelStore(device.store)
    files = make_bundle(device.model_bytes, bundle_config(1), device.private_key)
    files = _resigned(files, device.private_key, _set("created", "again"))
    with pytest.raises(BundleError):
        store.install(files, load_public_key(device.public_key))
    refusal = store.status()["last_refusal"]
    assert refusal["check"] == "version" and refusal["claimed_version"] == 1
    assert "not newer" in refusal["reason"]


def test_a_corrupt_state_leaves_the_floor_to_the_signed_manifests(device):
    """A damaged state.json is reported, not trusted; the signed manifests still hold the floor."""
    device.install(2)
    (device.store / "state.json").write_text('{"highest_version": "many"}')
    store, key = ModelStore(device.store), load_public_key(device.public_key)
    assert store.load(key).version == 2
    assert store.status()["damaged"] == [
        f"{device.store / 'state.json'} is damaged: highest_version 'many' is not a version number"
    ]
    (device.store / "CURRENT").write_text("1")
    with pytest.raises(BundleError, match="refusing to roll back"):
        store.load(key)
