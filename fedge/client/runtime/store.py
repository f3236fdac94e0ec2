"""The model store: verified, device-checked bundles by version, an atomic switch, no way back.

Layout: `versions/<version>/` (the three bundle files), `CURRENT` (the served version) and
`state.json` (the highest version ever made current, the pinned model line, the install
history and the last refusal). Every way in (the Flower deploy handler, `fedge install`) goes
through `ModelStore.install`; every way out (`fedge infer`, `fedge serve`, the Predictor)
through `ModelStore.load`, which refuses a `CURRENT` below the high-water mark.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.client.runtime.devicecheck import CheckReport, DeviceModelError, check_device_model
from fedge.client.runtime.files import UnsafeFileError, read_bounded
from fedge.client.runtime.verify import (
    BundleError,
    VerifiedBundle,
    verify_bundle,
    verify_bundle_dir,
)
from fedge.core import bundle_format as fmt
from fedge.core.io import atomic_write_bytes
from fedge.core.manifest import Manifest, unverified_claims

CURRENT = "CURRENT"  # the current version number, replaced atomically
VERSIONS = "versions"
STATE = "state.json"
LOCK = ".lock"
KEEP = 2  # the current version and the one before it
HISTORY = 20  # installs remembered in state.json
VERSION_TEXT = re.compile(r"[0-9]{1,19}")
DeviceCheck = Callable[[bytes, Manifest], CheckReport | None]  # the report goes in the history


@dataclass
class StoreState:
    """What state.json holds."""

    highest_version: int | None = None  # the high-water mark: CURRENT may never go below it
    model_id: str | None = None  # the pinned model line
    history: list[dict[str, Any]] = field(default_factory=list)
    last_refusal: dict[str, Any] | None = None


@dataclass(frozen=True)
class Installed:
    """The outcome of an install: the bundle, and whether it changed the store."""

    bundle: VerifiedBundle
    changed: bool  # False: this version was already current (a re-delivery)


def parse_version(text: bytes | str, where: str) -> int:
    """A version number from CURRENT or a directory name; BundleError("store") if not one."""
    raw = text.decode("ascii", errors="replace") if isinstance(text, bytes) else text
    value = raw.strip()
    if not VERSION_TEXT.fullmatch(value) or not 1 <= int(value) <= fmt.MAX_VERSION:
        raise BundleError("store", f"{where} is corrupt: {value[:20]!r} is not a version number")
    return int(value)


class ModelStore:
    """A directory of installed bundles with a current version and a high-water mark."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def current_version(self) -> int | None:
        """The current version, or None for an empty store."""
        pointer = self.root / CURRENT
        if not pointer.exists() and not pointer.is_symlink():
            return None
        return parse_version(self._read(pointer, 64), str(pointer))

    def state(self) -> StoreState:
        """The store's state (empty for a new store); BundleError("store") if unreadable."""
        path = self.root / STATE
        if not path.exists() and not path.is_symlink():
            return StoreState()
        try:
            state = StoreState(**json.loads(self._read(path, 1 << 20)))
            _check_state(state)
        except (ValueError, TypeError, RecursionError) as err:
            raise BundleError(
                "store", f"{path} is corrupt ({str(err)[:80]}); the rollback floor is unknown"
            ) from None
        return state

    def install(
        self,
        files: dict[str, bytes],
        trusted_key: Ed25519PublicKey,
        *,
        allow_model_switch: bool = False,
        device_check: DeviceCheck = check_device_model,
    ) -> Installed:
        """Verify, device-check, then install atomically; a refused bundle installs nothing.

        Re-delivering the current version (same manifest) is a success that changes nothing.
        A refusal is recorded in state.json (`fedge status` shows it) and raised as BundleError.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            try:
                return self._install(files, trusted_key, allow_model_switch, device_check)
            except BundleError as err:
                self.record_refusal(err, files)
                raise

    def load(self, trusted_key: Ed25519PublicKey) -> VerifiedBundle:
        """The current bundle, verified again from disk (files can change after install)."""
        version = self.current_version()
        if version is None:
            raise BundleError("store", f"no model installed in {self.root}")
        highest = self.state().highest_version
        if highest is not None and version < highest:
            raise BundleError(
                "version",
                f"{self.root / CURRENT} says {version} but version {highest} was installed; "
                "refusing to roll back (install a newer bundle)",
            )
        directory = self.root / VERSIONS / str(version)
        if directory.is_symlink() or not directory.is_dir():
            raise BundleError("store", f"{directory} is missing or not a plain directory")
        bundle = verify_bundle_dir(directory, trusted_key)
        if bundle.version != version:
            raise BundleError("version", f"store says {version}, manifest says {bundle.version}")
        return bundle

    def installed_versions(self) -> list[int]:
        """Versions present on disk, oldest first."""
        versions = self.root / VERSIONS
        if not versions.is_dir():
            return []
        return sorted(int(p.name) for p in versions.iterdir() if VERSION_TEXT.fullmatch(p.name))

    def record_refusal(self, err: BundleError, files: dict[str, bytes] | None = None) -> None:
        """Remember the latest refusal in state.json (best effort: a read-only store stays so)."""
        refusal: dict[str, Any] = {"time": _now(), "check": err.check, "reason": str(err)}
        manifest = (files or {}).get(fmt.MANIFEST_FILE)
        if manifest is not None:  # what the unverified manifest claims, if anything
            refusal.update(unverified_claims(manifest))
        try:
            state = self.state()
        except BundleError:
            state = StoreState()
        state.last_refusal = refusal
        with contextlib.suppress(OSError):
            self._write_state(state)

    def status(self) -> dict[str, Any]:
        """Current version, model line, high-water mark, versions on disk, history, last refusal."""
        state = self.state()
        return {
            "model_dir": str(self.root),
            "current_version": self.current_version(),
            "model_id": state.model_id,
            "highest_version": state.highest_version,
            "installed_versions": self.installed_versions(),
            "history": state.history,
            "last_refusal": state.last_refusal,
        }

    def _install(
        self,
        files: dict[str, bytes],
        key: Ed25519PublicKey,
        allow_model_switch: bool,
        device_check: DeviceCheck,
    ) -> Installed:
        bundle = verify_bundle(files, key)
        current, state = self.current_version(), self.state()
        if current == bundle.version:
            installed = self.root / VERSIONS / str(current) / fmt.MANIFEST_FILE
            with contextlib.suppress(OSError):
                if self._read(installed, fmt.MAX_MANIFEST_BYTES) == bundle.manifest_bytes:
                    return Installed(self.load(key), changed=False)
        floor = max(current or 0, state.highest_version or 0)
        if bundle.version <= floor:
            raise BundleError(
                "version",
                f"version {bundle.version} is not newer than installed {floor} (no rollback)",
            )
        if state.model_id not in (None, bundle.model_id) and not allow_model_switch:
            raise BundleError(
                "model-line",
                f"model_id {bundle.model_id!r} is not the installed line {state.model_id!r}; "
                "allow a switch explicitly (allow-model-switch) to change lines",
            )
        try:
            report = device_check(bundle.model_bytes, bundle.manifest)
        except DeviceModelError as err:
            raise BundleError("device-model", str(err)) from None
        self._write_version(bundle)
        atomic_write_bytes(self.root / CURRENT, str(bundle.version).encode())
        state.highest_version, state.model_id = bundle.version, bundle.model_id
        entry = {"version": bundle.version, "model_id": bundle.model_id, "installed": _now()}
        entry["sha256"] = bundle.manifest.model_sha256
        if report is not None:  # what the device check measured: run times, peak memory
            entry["device_check"] = report.to_json()
        state.history = [*state.history, entry]
        state.history = state.history[-HISTORY:]
        self._write_state(state)
        self._drop_old(bundle.version)
        return Installed(bundle, changed=True)

    def _write_version(self, bundle: VerifiedBundle) -> None:
        versions = self.root / VERSIONS
        versions.mkdir(parents=True, exist_ok=True)
        target = versions / str(bundle.version)
        tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=versions))
        try:
            for name, data in bundle.files().items():
                _write_synced(tmp / name, data)
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.exists():  # left by an install that stopped before CURRENT moved
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_state(self, state: StoreState) -> None:
        data = json.dumps(asdict(state), indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.root / STATE, data)

    def _drop_old(self, current: int) -> None:
        for version in self.installed_versions()[:-KEEP]:
            if version != current:
                shutil.rmtree(self.root / VERSIONS / str(version), ignore_errors=True)

    @staticmethod
    def _read(path: Path, limit: int) -> bytes:
        try:
            return read_bounded(path, limit)
        except UnsafeFileError as err:
            raise BundleError("store", str(err)) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One install at a time per store (POSIX advisory lock; elsewhere none)."""
        try:
            import fcntl
        except ImportError:
            yield
            return
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, stat.S_IRUSR | stat.S_IWUSR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _check_state(state: StoreState) -> None:
    """TypeError unless every field of a loaded state has its type."""
    highest = state.highest_version
    if highest is not None and (type(highest) is not int or highest < 1):
        raise TypeError(f"highest_version {highest!r} is not a version")
    if not (
        isinstance(state.model_id, str | None)
        and isinstance(state.history, list)
        and isinstance(state.last_refusal, dict | None)
    ):
        raise TypeError("model_id, history or last_refusal has the wrong type")


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
