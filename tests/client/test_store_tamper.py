"""A tampered model store: no single deleted or edited file lowers the rollback floor or changes
the model line, no symlink in the store is followed, damaged metadata is a one-line error."""

import os

import pytest

from fedge.client.runtime.files import UnsafeFileError, read_bounded


def test_read_bounded_refuses_a_directory_without_leaking_its_descriptor(tmp_path):
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    with pytest.raises(UnsafeFileError, match="is a directory, not a regular file") as err:
        read_bounded(tmp_path, 64)
    assert err.value.reason == "type"
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before
