"""A tampered model store: no single deleted or edited file lowers the rollback floor or changes
the model line, no symlink in the store is followed, damaged metadata is a one-line error."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from fedge.cli import app
from fedge.client.runtime.files import UnsafeFileError, read_bounded
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import BundleError, load_public_key
from fedge.compression.bundle import make_bundle
from tests.client.conftest import bundle_config


def _run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split()), result.exception


def _bundle(device, version, created=None, **changes):
    """A signed bundle; `created` makes it another bundle of the same version."""
    from dataclasses import replace

    files = make_bundle(
        device.model_bytes, replace(bundle_config(version), **changes), device.private_key
    )
    if created is not None:
        manifest = {**json.loads(files["manifest.json"]), "created": created}
        files["manifest.json"] = json.dumps(manifest).encode()
        files["manifest.sig"] = device.private_key.sign(files["manifest.json"])
    return files


@pytest.fixture()
def three(device):
    """A store that installed versions 1, 2 and 3: versions 2 and 3 are on disk."""
    device.install(2)
    device.install(3)
    return device


def _state(device) -> dict:
    return json.loads((device.store / "state.json").read_text())


STATE_TAMPERING = {
    "deleted": lambda path: path.unlink(),
    "lowered": lambda path: path.write_text(
        json.dumps({**json.loads(path.read_text()), "highest_version": 1})
    ),
    "garbage": lambda path: path.write_text("{not json"),
    "emptied": lambda path: path.write_text(""),
}


@pytest.mark.parametrize("tamper", sorted(STATE_TAMPERING))
def test_tampering_with_state_and_current_does_not_serve_an_older_version(three, tamper):
    STATE_TAMPERING[tamper](three.store / "state.json")
    (three.store / "CURRENT").write_text("2")  # version 2 is still on disk, signed
    store, key = ModelStore(three.store), load_public_key(three.public_key)
    with pytest.raises(BundleError, match="says 2 but version 3 was installed") as err:
        store.load(key)
    assert err.value.check == "version"
    message = str(err.value)
    assert "versions/3/manifest.json" in message and "refusing to roll back" in message
    code, out, _ = _run("status", "--model-dir", three.store, "--trusted-key", three.public_key)
    assert code == 0 and "floor: test version 3" in out and "verified: version check failed" in out
    (three.store.parent / "x.json").write_text(json.dumps([[0.0] * 64]))
    code, out, _ = _run(
        "infer", three.store.parent / "x.json", "--model-dir", three.store,
        "--trusted-key", three.public_key,
    )  # fmt: skip
    assert code == 2 and out.startswith("error: version check failed") and "roll back" in out


@pytest.mark.parametrize("tamper", sorted(STATE_TAMPERING))
def test_an_older_bundle_does_not_install_while_a_newer_one_is_on_disk(three, tamper):
    STATE_TAMPERING[tamper](three.store / "state.json")
    (three.store / "CURRENT").write_text("1")
    store = ModelStore(three.store)
    with pytest.raises(BundleError, match="version 2 is not newer than installed 3"):
        store.install(_bundle(three, 2, created="later"), load_public_key(three.public_key))
    assert store.installed_versions() == [2, 3]


def _store_files(device) -> list[str]:
    return sorted(
        str(path.relative_to(device.store))
        for path in device.store.rglob("*")
        if path.is_file() and path.name != "CURRENT"
    )


@pytest.mark.parametrize("how", ["delete", "garble"])
def test_no_single_file_lowers_the_floor(three, how):
    key = load_public_key(three.public_key)
    files = _store_files(three)
    assert "state.json" in files and "versions/3/manifest.sig" in files
    for name in files:
        path = three.store / name
        original = path.read_bytes()
        path.unlink() if how == "delete" else path.write_bytes(b"\0" + original[1:])
        (three.store / "CURRENT").write_text("2")
        with pytest.raises(BundleError, match="refusing to roll back"):
            ModelStore(three.store).load(key)
        with pytest.raises(BundleError, match="not newer than installed 3"):
            ModelStore(three.store).install(_bundle(three, 2, created="again"), key)
        path.write_bytes(original)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda state: state.pop("model_id") and state.pop("highest_version"),
        lambda state: state.update(model_id="another-run"),
    ],
    ids=["removed", "edited"],
)
def test_the_model_line_survives_a_tampered_state(three, tamper):
    state = _state(three)
    tamper(state)
    (three.store / "state.json").write_text(json.dumps(state))
    store, key = ModelStore(three.store), load_public_key(three.public_key)
    with pytest.raises(BundleError, match="'another-run' is not the installed line 'test'") as err:
        store.install(_bundle(three, 4, model_id="another-run"), key)
    assert err.value.check == "model-line" and store.current_version() == 3


def test_an_install_stopped_before_current_moved_is_finished_by_delivering_it_again(device):
    store, key = ModelStore(device.store), load_public_key(device.public_key)
    state = (device.store / "state.json").read_bytes()
    files = _bundle(device, 2)
    store.install(files, key)
    (device.store / "CURRENT").write_text("1")  # as if it stopped after writing versions/2
    (device.store / "state.json").write_bytes(state)
    with pytest.raises(BundleError, match="install version 2 again or a newer bundle"):
        store.load(key)
    with pytest.raises(BundleError, match="not newer than installed 2"):
        store.install(_bundle(device, 2, created="another bundle of version 2"), key)
    assert store.install(files, key).changed
    assert store.load(key).version == 2 and store.state().highest_version == 2


def test_a_damaged_state_is_kept_and_rebuilt_by_the_next_install(three):
    (three.store / "state.json").write_text("[1, 2")
    store, key = ModelStore(three.store), load_public_key(three.public_key)
    with pytest.raises(BundleError, match="not newer"):
        store.install(_bundle(three, 3, created="again"), key)
    assert (three.store / "state.json").read_text() == "[1, 2"  # the refusal did not erase it
    store.install(_bundle(three, 4), key)
    assert (three.store / "state.json.damaged").read_text() == "[1, 2"
    state = store.state()
    assert state.highest_version == 4 and [e["version"] for e in state.history] == [4]


SYMLINKED = ["versions", "versions/2", "versions/2/model.onnx", "versions/3/manifest.sig"]
SYMLINKED += ["state.json", "CURRENT"]


@pytest.mark.parametrize("name", SYMLINKED)
def test_a_symlink_anywhere_in_the_store_is_refused(three, tmp_path, name):
    path = three.store / name
    elsewhere = tmp_path / "elsewhere"
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)
    before = sorted(str(p) for p in elsewhere.rglob("*")) if elsewhere.is_dir() else None
    store, key = ModelStore(three.store), load_public_key(three.public_key)
    with pytest.raises(BundleError, match=f"{path} is a symlink") as err:
        store.load(key)
    assert err.value.check == "store" and "\n" not in str(err.value)
    with pytest.raises(BundleError, match=f"{path} is a symlink"):
        store.install(_bundle(three, 4), key)
    if before is not None:
        assert sorted(str(p) for p in elsewhere.rglob("*")) == before  # nothing written there


def test_a_symlinked_lock_is_not_followed(device, tmp_path):
    target = tmp_path / "not-the-store" / "victim"
    target.parent.mkdir()
    (device.store / ".lock").unlink(missing_ok=True)
    (device.store / ".lock").symlink_to(target)
    with pytest.raises(BundleError, match=r"\.lock is a symlink") as err:
        ModelStore(device.store).install(_bundle(device, 2), load_public_key(device.public_key))
    assert err.value.check == "store"
    assert not target.exists() and ModelStore(device.store).current_version() == 1


DIRECTORIES = [
    "CURRENT",
    "state.json",
    ".lock",
    "versions/1/model.onnx",
    "versions/1/manifest.json",
]


@pytest.mark.parametrize("name", DIRECTORIES)
def test_a_directory_where_a_file_belongs_is_a_one_line_error(device, name):
    path = device.store / name
    path.unlink(missing_ok=True)
    path.mkdir()
    bundle = _bundle(device, 2)
    (device.store.parent / "b").mkdir()
    for file_name, data in bundle.items():
        (device.store.parent / "b" / file_name).write_bytes(data)
    code, out, exc = _run(
        "install", device.store.parent / "b", "--model-dir", device.store,
        "--trusted-key", device.public_key,
    )  # fmt: skip
    assert code == 2 and not isinstance(exc, OSError | KeyError), exc
    assert out.startswith("error: ") and str(path) in out, out
    assert "is a directory" in out or "Is a directory" in out, out
    if name != ".lock":  # serving takes no lock
        with pytest.raises(BundleError, match="is a directory") as err:
            ModelStore(device.store).load(load_public_key(device.public_key))
        assert str(path) in str(err.value)


def test_read_bounded_refuses_a_directory_without_leaking_its_descriptor(tmp_path):
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(UnsafeFileError, match="is a directory, not a regular file") as err:
        read_bounded(tmp_path, 64)
    assert err.value.reason == "type"
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"version": 1}, "history[1] lacks model_id, installed, sha256"),
        (5, "history[1] is 5, not an object"),
        (
            {"version": "x", "model_id": "m", "installed": "t", "sha256": "s"},
            "history[1] version 'x' is not",
        ),
    ],
)
def test_status_shows_a_damaged_history_entry_as_damaged(device, entry, message):
    state = _state(device)
    state["history"].append(entry)
    state["last_refusal"] = {"time": 1}
    (device.store / "state.json").write_text(json.dumps(state))
    code, out, exc = _run("status", "--model-dir", device.store)
    assert code == 0 and exc is None, out
    assert f"installed: damaged: {device.store / 'state.json'} {message}" in out
    assert "last refusal: damaged" in out and "last_refusal.time is missing or not text" in out
    code, out, _ = _run("status", "--model-dir", device.store, "--json")
    report = json.loads(out)
    assert code == 0 and message in report["history"][1]["damaged"]
    assert report["history"][0]["version"] == 1


def test_status_reports_a_corrupt_current_and_symlinks_instead_of_failing(three, tmp_path):
    (three.store / "CURRENT").write_text("two")
    shutil.move(three.store / "versions" / "2", tmp_path / "v2")
    (three.store / "versions" / "2").symlink_to(tmp_path / "v2")
    code, out, _ = _run("status", "--model-dir", three.store, "--trusted-key", three.public_key)
    assert code == 0, out
    assert f"damaged: {three.store / 'CURRENT'} is corrupt: 'two' is not a version number" in out
    assert f"damaged: {three.store / 'versions' / '2'} is a symlink, not a directory" in out
    assert "on disk: 3" in out and "verified: store check failed" in out
