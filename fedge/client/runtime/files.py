"""Store and bundle files read and locked safely: no symlink followed, sizes checked before reading."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
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
        if err.errno == errno.ELOOP:  # a symlink that appeared after the check
            raise UnsafeFileError(f"{path} is a symlink, not a regular file", "type") from None
        reason = "type" if err.errno == errno.EISDIR else "unreadable"
        raise UnsafeFileError(f"cannot open {path}: {err.strerror or err}", reason) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # checked before fdopen, which raises for a directory
            raise UnsafeFileError(f"{path} is {_kind(info.st_mode)}, not a regular file", "type")
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
        raise UnsafeFileError(f"{path} is {_kind(info.st_mode)}, not {kind}", "type")
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
            raise UnsafeFileError(f"{path} is {_kind(mode)}, not a regular file", "type")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    """What a file of this mode is, in words ("a symlink", "a directory", ...)."""
    kinds = {
        stat.S_ISLNK: "a symlink",
        stat.S_ISDIR: "a directory",
        stat.S_ISREG: "a regular file",
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISSOCK: "a socket",
    }
    return next((name for test, name in kinds.items() if test(mode)), "a device")
