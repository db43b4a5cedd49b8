"""Segment files remember which fan-out directories exist (one mkdir per directory, not per
file), and still create a file whose directory was removed behind their back."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from peerdistd.errors import LocalError
from peerdistd.store.cache_files import SegmentFiles


def test_a_removed_fanout_directory_is_made_again(tmp_path: Path) -> None:
    files = SegmentFiles(tmp_path)
    fd, _ = files.create(0x101)
    os.close(fd)
    shutil.rmtree(files.path(0x101).parent)  # e.g. an operator cleaning up by hand
    fd, _ = files.create(0x201)  # same bucket (0x01)
    os.close(fd)
    assert files.path(0x201).is_file()


def test_wipe_forgets_the_directories(tmp_path: Path) -> None:
    files = SegmentFiles(tmp_path)
    fd, _ = files.create(7)
    os.close(fd)
    files.wipe()
    fd, _ = files.create(7)
    os.close(fd)
    assert files.path(7).is_file()


def test_create_says_whether_it_made_the_file(tmp_path: Path) -> None:
    # A new file's directory entry must be synced before the rows vouching for its blocks
    # (cache_commit): "made here" comes from O_EXCL, not from a stat taken before the open.
    files = SegmentFiles(tmp_path)
    fd, created = files.create(0x42)
    os.close(fd)
    assert created and files.path(0x42).is_file()
    fd, created = files.create(0x42)
    os.close(fd)
    assert not created


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_create_refuses_what_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    files = SegmentFiles(tmp_path)
    fd, _ = files.create(0x10)  # makes the fan-out directory
    os.close(fd)
    path = files.path(0x110)  # the same fan-out directory (0x10)
    if kind == "symlink":
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir()
    with pytest.raises(LocalError, match="segment file"):
        files.create(0x110)
    assert files.open(0x110) is None  # and it is never read either
