"""The model store: versioned installs of verified bundles, an atomic switch, the previous one kept."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.client.runtime.verify import BundleError, VerifiedBundle, read_bundle_dir, verify_bundle
from fedge.core.io import atomic_write_bytes

CURRENT = "CURRENT"  # a file holding the current version number, replaced atomically
VERSIONS = "versions"
KEEP = 2  # the current version and the one before it


class ModelStore:
    """A directory of installed bundles: versions/<version>/ and a CURRENT pointer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def current_version(self) -> int | None:
        """The installed version, or None for an empty store."""
        pointer = self.root / CURRENT
        if not pointer.is_file():
            return None
        text = pointer.read_text().strip()
        if not text.isdigit():
            raise BundleError("store", f"{pointer} is corrupt: {text[:20]!r}")
        return int(text)

    def install(self, files: dict[str, bytes], trusted_key: Ed25519PublicKey) -> VerifiedBundle:
        """Verify, then install atomically; a refused bundle changes nothing."""
        bundle = verify_bundle(files, trusted_key, newer_than=self.current_version())
        versions = self.root / VERSIONS
        versions.mkdir(parents=True, exist_ok=True)
        target = versions / str(bundle.version)
        if not target.exists():
            tmp = Path(tempfile.mkdtemp(prefix=".install-", dir=versions))
            try:
                for name, data in bundle.files().items():
                    _write_synced(tmp / name, data)
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        atomic_write_bytes(self.root / CURRENT, str(bundle.version).encode())
        self._drop_old(bundle.version)
        return bundle

    def load(self, trusted_key: Ed25519PublicKey) -> VerifiedBundle:
        """The current bundle, verified again from disk (files can change after install)."""
        version = self.current_version()
        if version is None:
            raise BundleError("store", f"no model installed in {self.root}")
        bundle = verify_bundle(read_bundle_dir(self.root / VERSIONS / str(version)), trusted_key)
        if bundle.version != version:
            raise BundleError("version", f"store says {version}, manifest says {bundle.version}")
        return bundle

    def installed_versions(self) -> list[int]:
        """Versions present on disk, oldest first."""
        versions = self.root / VERSIONS
        if not versions.is_dir():
            return []
        return sorted(int(p.name) for p in versions.iterdir() if p.name.isdigit())

    def _drop_old(self, current: int) -> None:
        for version in self.installed_versions()[:-KEEP]:
            if version != current:
                shutil.rmtree(self.root / VERSIONS / str(version), ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
