"""Store and bundle files read and locked safely: no symlink followed, sizes checked before reading."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from fedge.core.bounded import NOFOLLOW, NONBLOCK, UnsafeFileError, kind_of, read_bounded

__all__ = ["UnsafeFileError", "exclusive_lock", "plain_dir", "plain_file", "read_bounded"]


def plain_dir(path: Path | str) -> bool:
    """True for a real directory, False when nothing is at `path`.

    Raises
    ------
    UnsafeFileError
        When `path` is a symlink (never followed, even to a directory) or not a directory.

    """
    return _plain(Path(path), stat.S_ISDIR, "a directory")


def plain_file(path: Path | str) -> bool:
    """True for a regular file, False when nothing is at `path`.

    Raises
    ------
    UnsafeFileError
        When `path` is a symlink (never followed), a directory, a FIFO, a socket or a device.

    """
    return _plain(Path(path), stat.S_ISREG, "a regular file")


def _plain(path: Path, is_kind: Callable[[int], bool], kind: str) -> bool:
    """True when `path` (not followed) is of the kind `is_kind` accepts; False when absent."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise UnsafeFileError(f"cannot stat {path}: {err.strerror or err}", "unreadable") from None
    if not is_kind(info.st_mode):
        raise UnsafeFileError(f"{path} is {kind_of(info.st_mode)}, not {kind}", "type")
    return True


@contextlib.contextmanager
def exclusive_lock(path: Path | str) -> Iterator[None]:
    """Hold an advisory lock on `path`, created if missing (POSIX flock; elsewhere none).

    Raises
    ------
    UnsafeFileError
        When `path` is a symlink (never followed) or not a regular file.

    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | NOFOLLOW | NONBLOCK
    try:
        fd = os.open(path, flags, stat.S_IRUSR | stat.S_IWUSR)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeFileError(f"{path} is a symlink, not a regular file", "type") from None
        reason = "type" if err.errno == errno.EISDIR else "unreadable"
        raise UnsafeFileError(f"cannot open {path}: {err.strerror or err}", reason) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFileError(f"{path} is {kind_of(mode)}, not a regular file", "type")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
