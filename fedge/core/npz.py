"""Reading a user's npz safely: every member's header (shape, dtype, size) checked before it expands.

An npz is a zip of .npy files; a few megabytes of zeros can declare gigabytes. Each member's
npy header is read from the zip stream (only its first bytes are decompressed) and checked:
a known numeric dtype, no empty sample axis, a declared size that matches the zip's own
uncompressed size and stays under MAX_NPZ_BYTES in total. Only then are the arrays loaded.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np

from fedge.core.settings import ConfigError

MAX_NPZ_BYTES = 2 * 1024**3  # all arrays together, as loaded


def npz_header(archive: zipfile.ZipFile, member: str) -> tuple[tuple[int, ...], np.dtype]:
    """The (shape, dtype) an npz member declares; ValueError when its header is malformed."""
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"npy format version {version} is not supported")
        header_size = stream.tell()
    info = archive.getinfo(member)
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"dtype {dtype} is not a real number type")
    expected = header_size + math.prod(shape) * dtype.itemsize
    if info.file_size != expected:
        raise ValueError(
            f"its header declares shape {shape} of {dtype} ({expected} bytes) but the archive "
            f"holds {info.file_size} bytes"
        )
    return tuple(int(d) for d in shape), dtype


def checked_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays `keys` of npz `path`; ConfigError naming the file, the array and the fault."""
    if not path.is_file():
        raise ConfigError(f"npz file not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            missing = [k for k in keys if k not in members]
            if missing:
                raise ConfigError(
                    f"npz {path} lacks arrays {', '.join(missing)}; required: "
                    f"{', '.join(keys)} (has: {', '.join(members) or 'none'})"
                )
            total = 0
            for key in keys:
                try:
                    shape, dtype = npz_header(archive, members[key])
                except ValueError as err:
                    raise ConfigError(f"npz {path}: array {key}: {err}") from None
                if len(shape) >= 2 and 0 in shape[1:]:
                    raise ConfigError(
                        f"npz {path}: array {key} has shape {shape}, samples with no values; "
                        "allowed: every axis after the first at least 1"
                    )
                total += math.prod(shape) * dtype.itemsize
            if total > MAX_NPZ_BYTES:
                raise ConfigError(
                    f"npz {path} declares {total / 1024**3:.1f} GiB of arrays; allowed: at most "
                    f"{MAX_NPZ_BYTES / 1024**3:.0f} GiB"
                )
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in keys}
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot read npz {path}: {err}") from err
