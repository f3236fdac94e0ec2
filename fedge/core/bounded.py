"""Files read with a bound: no symlink followed, no FIFO or device, the size checked first.

Device-safe (standard library only): the device runtime reads bundle and store files through
it, and the server side its keys and other files a user names.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not wait for a writer
MAX_KEY_BYTES = 16 << 10  # a PEM key file (an Ed25519 one has about 120 bytes)


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
        The file. A symlink, a directory, a FIFO or a device is refused, not followed: a
        file a user names (a key, a token) is resolved by the caller first.
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
                f"{path} is a symlink, not a regular file (not followed here)", "type"
            )
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | NONBLOCK | getattr(os, "O_BINARY", 0))
    except UnsafeFileError:
        raise
    except FileNotFoundError:
        raise UnsafeFileError(f"{path} does not exist", "missing") from None
    except OSError as err:
        if err.errno == errno.ELOOP:  # a symlink that appeared after the check
            raise UnsafeFileError(f"{path} is a symlink, not a regular file", "type") from None
        reason = "type" if err.errno == errno.EISDIR else "unreadable"
        raise UnsafeFileError(f"cannot open {path}: {err.strerror or err}", reason) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which raises for a directory
            raise UnsafeFileError(f"{path} is {kind_of(info.st_mode)}, not a regular file", "type")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as handle:
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


def read_named(path: Path | str, limit: int) -> bytes:
    """A file a user names (a key, a token, a scenario, a run's file): symlinks are followed.

    A mounted secret is often a symlink; the target is then read as `read_bounded` reads a
    store file, so a directory, FIFO, device or oversized file is still refused unread.
    """
    return read_bounded(Path(path).resolve(), limit)


def kind_of(mode: int) -> str:
    """What a file of this mode is, in words ("a symlink", "a directory", ...)."""
    kinds = {
        stat.S_ISLNK: "a symlink",
        stat.S_ISDIR: "a directory",
        stat.S_ISREG: "a regular file",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a device")
