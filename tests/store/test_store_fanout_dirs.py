"""Segment files remember which fan-out directories exist (one mkdir per directory, not per
file), and still create a file whose directory was removed behind their back."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from peerdistd.store.cache_files import SegmentFiles


def test_a_removed_fanout_directory_is_made_again(tmp_path: Path) -> None:
    files = SegmentFiles(tmp_path)
    fd = files.open(0x101, create=True)
    assert fd is not None
    os.close(fd)
    shutil.rmtree(files.path(0x101).parent)  # e.g. an operator cleaning up by hand
    fd = files.open(0x201, create=True)  # same bucket (0x01)
    assert fd is not None
    os.close(fd)
    assert files.path(0x201).is_file()


def test_wipe_forgets_the_directories(tmp_path: Path) -> None:
    files = SegmentFiles(tmp_path)
    fd = files.open(7, create=True)
    assert fd is not None
    os.close(fd)
    files.wipe()
    fd = files.open(7, create=True)
    assert fd is not None
    os.close(fd)
    assert files.path(7).is_file()
