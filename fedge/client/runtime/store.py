"""The model store: verified, device-checked bundles by version, an atomic switch, no way back.

Layout: `versions/<version>/` (the bundle files), `CURRENT` (the served version), `state.json`
(the highest version made current, its model line, the install history, the last refusal).
Every way in (the Flower deploy handler, `fedge install`) goes through `ModelStore.install`;
every way out (`fedge infer`, `fedge serve`, the Predictor) through `ModelStore.load`, which
refuses a `CURRENT` below the rollback floor: the highest version state.json or a signed
manifest on disk vouches for (`rollback`), so no single file lowers it. No symlink is followed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.client.runtime import rollback
from fedge.client.runtime.devicecheck import CheckReport, DeviceModelError, check_device_model
from fedge.client.runtime.files import UnsafeFileError, exclusive_lock, plain_dir, read_bounded
from fedge.client.runtime.rollback import VERSION_TEXT, VERSIONS_DIR, Floor
from fedge.client.runtime.storestate import (
    HISTORY,
    REFUSAL_CLAIMS,
    STATE_FILE,
    HistoryEntry,
    StoreState,
    read_state,
)
from fedge.client.runtime.storestatus import status_report
from fedge.client.runtime.tiers import check_tier
from fedge.client.runtime.verify import (
    BundleError,
    VerifiedBundle,
    verify_bundle,
    verify_bundle_dir,
)
from fedge.core import bundle_format as fmt
from fedge.core.io import atomic_write_bytes
from fedge.core.manifest import unverified_claims

CURRENT = "CURRENT"  # the current version number, replaced atomically
VERSIONS = VERSIONS_DIR
STATE = STATE_FILE
DAMAGED_STATE = "state.json.damaged"  # a damaged state.json, kept when an install rebuilds it
LOCK = ".lock"
KEEP = 2  # the current version and the one before it
DeviceCheck = Callable[..., CheckReport | None]  # (model, manifest, runtime=) -> its report


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
    """A directory of installed bundles with a current version and a rollback floor."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def current_version(self) -> int | None:
        """The current version, or None for an empty store."""
        pointer = self.root / CURRENT
        if not pointer.exists() and not pointer.is_symlink():
            return None
        return parse_version(self._read(pointer, 64), str(pointer))

    def state(self) -> StoreState:
        """The store's state (empty for a new store); BundleError("store") if damaged."""
        state, damage = self._state_witness()
        if damage is not None:
            raise BundleError("store", f"{damage}; the rollback floor rests on versions/ alone")
        return state

    def floor(self, trusted_key: Ed25519PublicKey) -> Floor | None:
        """The rollback floor and model line: what state.json or a signed manifest vouches for.

        BundleError("store") when the store holds a symlink or a file where a directory
        should be (`versions/`, a version directory, a file in one), or a state.json that is
        not a regular file; None for a store nothing was ever installed in.
        """
        state, _ = self._state_witness()
        return rollback.highest(
            rollback.state_floor(state, self.root / STATE),
            rollback.signed_floor(self.root / VERSIONS, self._version_dirs(), trusted_key),
        )

    def install(
        self,
        files: dict[str, bytes],
        trusted_key: Ed25519PublicKey,
        *,
        allow_model_switch: bool = False,
        device_check: DeviceCheck = check_device_model,
        tier: str = "",
        assigned: str = "",
        runtime: str = "onnx",
    ) -> Installed:
        """Verify, device-check, then install atomically; a refused bundle installs nothing.

        Re-delivering the current version (same manifest) is a success that changes nothing.
        `tier`: this device's own tier, `assigned`: the one a server assigned it (`check_tier`),
        `runtime`: what it runs (the device check runs the bundle's model for it).
        A refusal is recorded in state.json (`fedge status` shows it) and raised as BundleError.
        """
        if self.root.exists() and not self.root.is_dir():
            raise BundleError("store", f"{self.root} is not a directory")
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            node = (tier, assigned, runtime)
            try:
                return self._install(files, trusted_key, allow_model_switch, device_check, node)
            except BundleError as err:
                self.record_refusal(err, files)
                raise

    def load(self, trusted_key: Ed25519PublicKey) -> VerifiedBundle:
        """The current bundle, verified again from disk (files can change after install)."""
        version = self.current_version()
        floor = self.floor(trusted_key)
        if version is None:
            if floor is None:
                raise BundleError("store", f"no model installed in {self.root}")
            raise BundleError(
                "store",
                f"{self.root / CURRENT} is missing but version {floor.version} was installed; "
                "the store is damaged (install a bundle again)",
            )
        if floor is not None and version < floor.version:
            raise BundleError(
                "version",
                f"{self.root / CURRENT} says {version} but version {floor.version} was installed "
                f"({floor.witness}); refusing to roll back (install version {floor.version} "
                "again or a newer bundle)",
            )
        directory = self.root / VERSIONS / str(version)
        if not self._plain_dir(directory):
            raise BundleError("store", f"{directory} is missing")
        bundle = verify_bundle_dir(directory, trusted_key)
        if bundle.version != version:
            raise BundleError("version", f"store says {version}, manifest says {bundle.version}")
        return bundle

    def installed_versions(self) -> list[int]:
        """Versions present on disk as real directories, oldest first."""
        return rollback.scan_versions(self.root / VERSIONS).versions

    def record_refusal(self, err: BundleError, files: dict[str, bytes] | None = None) -> None:
        """Remember the latest refusal in state.json (best effort: a read-only store stays so).

        A damaged state.json is left as it is: `fedge status` reports the damage.
        """
        refusal: dict[str, Any] = {"time": _now(), "check": err.check, "reason": str(err)}
        manifest = (files or {}).get(fmt.MANIFEST_FILE)
        if manifest is not None:  # what the unverified manifest claims, if anything
            claims = unverified_claims(manifest)
            refusal.update({k: v for k, v in claims.items() if type(v) is REFUSAL_CLAIMS.get(k)})
        try:
            state = self.state()
        except BundleError:
            return
        state.last_refusal = refusal
        with contextlib.suppress(OSError):
            self._write_state(state)

    def status(self) -> dict[str, Any]:
        """What `fedge status` shows (`storestatus.status_report`); never raises for damage."""
        return status_report(self.root, self.current_version)

    def _install(
        self,
        files: dict[str, bytes],
        key: Ed25519PublicKey,
        allow_model_switch: bool,
        device_check: DeviceCheck,
        node: tuple[str, str, str],  # its tier, the tier it was assigned, its runtime
    ) -> Installed:
        bundle = verify_bundle(files, key)
        made_for, (tier, assigned, runtime) = bundle.manifest.tier, node
        check_tier(made_for, tier, assigned, lambda: self._installed_tier(key), allow_model_switch)
        model = bundle.model_for(runtime)  # BundleError("runtime") when the bundle lacks it
        current = self.current_version()
        if current == bundle.version and self._is_on_disk(bundle):
            installed = self.load(key)  # a copy sent without this runtime's model is redone
            if runtime == "onnx" or runtime in installed.artifacts:
                return Installed(installed, changed=False)
        floor = self.floor(key)
        self._check_newer(bundle, current, floor)
        if floor is not None and floor.model_id != bundle.model_id and not allow_model_switch:
            raise BundleError(
                "model-line",
                f"model_id {bundle.model_id!r} is not the installed line {floor.model_id!r}; "
                "allow a switch explicitly (allow-model-switch) to change lines",
            )
        try:
            report = device_check(model, bundle.manifest, runtime=runtime)
        except DeviceModelError as err:
            raise BundleError("device-model", str(err)) from None
        self._write_version(bundle)
        atomic_write_bytes(self.root / CURRENT, str(bundle.version).encode())
        self._record_install(bundle, report)
        self._drop_old(bundle.version)
        return Installed(bundle, changed=True)

    def _installed_tier(self, key: Ed25519PublicKey) -> str:
        """The tier the highest installed version's signed manifest names ("": none)."""
        floor = self.floor(key)
        return floor.tier if floor is not None else ""

    def _check_newer(
        self, bundle: VerifiedBundle, current: int | None, floor: Floor | None
    ) -> None:
        """BundleError("version") unless the bundle is newer than everything installed.

        The one exception: the very bundle the floor's signed manifest is, which an install
        wrote to versions/ before it stopped short of moving CURRENT: installing it again
        finishes that install.
        """
        highest = max(current or 0, floor.version if floor else 0)
        if bundle.version > highest:
            return
        if floor and floor.signed and bundle.version == floor.version and self._is_on_disk(bundle):
            return
        raise BundleError(
            "version",
            f"version {bundle.version} is not newer than installed {highest} (no rollback)",
        )

    def _is_on_disk(self, bundle: VerifiedBundle) -> bool:
        """True if versions/ holds this bundle's manifest, byte for byte."""
        installed = self.root / VERSIONS / str(bundle.version) / fmt.MANIFEST_FILE
        with contextlib.suppress(OSError):
            return read_bounded(installed, fmt.MAX_MANIFEST_BYTES) == bundle.manifest_bytes
        return False

    def _record_install(self, bundle: VerifiedBundle, report: CheckReport | None) -> None:
        """state.json after an install; a damaged one is kept aside and rebuilt."""
        state, damage = self._state_witness()
        if damage is not None:
            os.replace(self.root / STATE, self.root / DAMAGED_STATE)
        state.highest_version, state.model_id = bundle.version, bundle.model_id
        entry = HistoryEntry(bundle.version, bundle.model_id, _now(), bundle.manifest.model_sha256)
        if report is not None:  # what the device check measured: run times, peak memory
            entry = dataclasses.replace(entry, device_check=report.to_json())
        state.history = [*state.history, entry.to_json()][-HISTORY:]
        self._write_state(state)

    def _state_witness(self) -> tuple[StoreState, str | None]:
        """state.json, or an empty state and a line saying why it is not used (`read_state`).

        Damaged content is not an error: the floor then rests on the signed manifests. A
        state.json that is a symlink, a directory or unreadable is BundleError("store").
        """
        try:
            return read_state(self.root / STATE)
        except UnsafeFileError as err:
            raise BundleError("store", str(err)) from None

    def _version_dirs(self) -> list[int]:
        """The version directories; BundleError("store") naming the first entry that is wrong."""
        scan = rollback.scan_versions(self.root / VERSIONS)
        if scan.problems:
            more = f" (and {len(scan.problems) - 1} more)" if len(scan.problems) > 1 else ""
            raise BundleError("store", f"{scan.problems[0]}{more}; refusing to use the store")
        return scan.versions

    def _write_version(self, bundle: VerifiedBundle) -> None:
        versions = self.root / VERSIONS
        self._plain_dir(versions)
        versions.mkdir(exist_ok=True)
        target = versions / str(bundle.version)
        tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=versions))
        try:
            for name, data in bundle.files().items():
                _write_synced(tmp / name, data)
            if self._plain_dir(target):  # left by an install that stopped before CURRENT moved
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_state(self, state: StoreState) -> None:
        atomic_write_bytes(self.root / STATE, state.to_json())

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

    @staticmethod
    def _plain_dir(path: Path) -> bool:
        try:
            return plain_dir(path)
        except UnsafeFileError as err:
            raise BundleError("store", str(err)) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One install at a time per store; BundleError("store") if the lock file is unsafe."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(self.root / LOCK))
            except UnsafeFileError as err:
                raise BundleError("store", str(err)) from None
            yield


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
