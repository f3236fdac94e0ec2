"""The rollback floor and the model line, vouched for by state.json and by signed manifests on disk.

No single file decides how far back a store may go: the floor is the highest version any
witness vouches for, state.json's high-water mark or a manifest in `versions/` whose signature
verifies under the trusted key. Deleting or editing one file therefore cannot lower it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedge.client.runtime.files import UnsafeFileError, plain_dir, plain_file, read_bounded
from fedge.client.runtime.storestate import StoreState
from fedge.client.runtime.verify import BundleError, verify_manifest
from fedge.core import bundle_format as fmt

VERSIONS_DIR = "versions"
VERSION_TEXT = re.compile(r"[0-9]{1,19}")  # the name of a version directory


@dataclass(frozen=True)
class Floor:
    """The highest version installed, its model line, and the file that vouches for it."""

    version: int
    model_id: str
    witness: str  # state.json, or the path of a signed manifest.json
    signed: bool  # the witness is a manifest signed by the trusted key
    tier: str = ""  # the device tier its signed manifest names ("": none, or not signed)


@dataclass(frozen=True)
class VersionDirs:
    """What `versions/` holds: the version directories, and entries that are not what they seem."""

    versions: list[int]  # real directories named by a version number, oldest first
    problems: list[str]  # one line each: a symlink, a file where a directory should be, ...


def scan_versions(versions: Path) -> VersionDirs:
    """The version directories under `versions`, following no symlink.

    Names that are no version number (an interrupted install's `.install-*`) are not looked
    into. A version entry that is not a real directory, or holds anything but regular files,
    is a problem; so is `versions` itself when it is a symlink or not a directory.
    """
    try:
        if not plain_dir(versions):
            return VersionDirs([], [])
        entries = sorted(versions.iterdir())
    except (UnsafeFileError, OSError) as err:
        return VersionDirs([], [str(err)])
    found, problems = [], []
    for entry in entries:
        if not VERSION_TEXT.fullmatch(entry.name):
            continue
        try:
            plain_dir(entry)
            for item in sorted(entry.iterdir()):
                plain_file(item)
        except UnsafeFileError as err:
            problems.append(str(err))
            continue
        except OSError as err:
            problems.append(f"cannot list {entry}: {err.strerror or err}")
            continue
        found.append(int(entry.name))
    return VersionDirs(sorted(found), problems)


def signed_floor(versions: Path, found: list[int], key: Ed25519PublicKey) -> Floor | None:
    """The highest version among `found` whose manifest verifies under `key` (None: none does).

    A manifest that is missing, too large or not signed by `key` vouches for nothing; the
    version it signs is what counts, whatever its directory is called.
    """
    best: Floor | None = None
    for version in found:
        directory = versions / str(version)
        try:
            manifest_bytes = read_bounded(directory / fmt.MANIFEST_FILE, fmt.MAX_MANIFEST_BYTES)
            signature = read_bounded(directory / fmt.SIGNATURE_FILE, fmt.MAX_SIGNATURE_BYTES)
            manifest = verify_manifest(manifest_bytes, signature, key)
        except (UnsafeFileError, BundleError):
            continue
        if best is None or manifest.version > best.version:
            witness = str(directory / fmt.MANIFEST_FILE)
            best = Floor(manifest.version, manifest.model_id, witness, True, manifest.tier)
    return best


def state_floor(state: StoreState | None, path: Path) -> Floor | None:
    """What state.json at `path` vouches for (None: nothing, or it could not be read)."""
    if state is None or state.highest_version is None or state.model_id is None:
        return None
    return Floor(state.highest_version, state.model_id, str(path), signed=False)


def highest(*floors: Floor | None) -> Floor | None:
    """The highest floor; at equal versions a signed manifest's, which says the model line."""
    known = [floor for floor in floors if floor is not None]
    return max(known, key=lambda floor: (floor.version, floor.signed)) if known else None
