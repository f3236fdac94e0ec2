"""Bounded reads of small trusted-path files: regular files only, no symlinks, size checked first."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer


class UnsafeFileError(OSError):
    """A file is missing, not a regular file, a symlink, or not of an allowed size.

    `reason` is "missing", "unreadable", "type" or "size".
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_bounded(path: Path | str, limit: int, *, exact: int | None = None) -> bytes:
    """The bytes of `path`, refused before reading when it is too big (or not `exact` bytes).

    Parameters
    ----------
    path
        The file. A symlink, a directory, a FIFO or a device is refused, not followed.
    limit
        The most bytes read; a larger file is refused by its size, not read.
    exact
        When given, the size the file must have (checked with fstat before reading).

    Raises
    ------
    UnsafeFileError
        With a one-line message naming the file and what is wrong with it.

    """
    path = Path(path)
    try:
        if path.is_symlink():  # O_NOFOLLOW covers this on POSIX; this also covers Windows
            raise UnsafeFileError(
                f"{path} is a symlink; bundle and store files must be regular files", "type"
            )
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | getattr(os, "O_BINARY", 0))
    except UnsafeFileError:
        raise
    except FileNotFoundError:
        raise UnsafeFileError(f"{path} does not exist", "missing") from None
    except OSError as err:
        reason = "type" if err.errno in (errno.ELOOP, errno.EISDIR) else "unreadable"
        raise UnsafeFileError(f"cannot open {path}: {err.strerror or err}", reason) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFileError(f"{path} is not a regular file", "type")
        if exact is not None and info.st_size != exact:
            raise UnsafeFileError(f"{path} has {info.st_size} bytes, expected {exact}", "size")
        if info.st_size > limit:
            raise UnsafeFileError(
                f"{path} has {info.st_size} bytes, more than the {limit} allowed", "size"
            )
        data = handle.read(limit + 1)
    if len(data) > limit or (exact is not None and len(data) != exact):
        raise UnsafeFileError(f"{path} changed size while being read", "size")
    return data
