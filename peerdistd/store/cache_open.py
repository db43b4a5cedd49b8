"""Opening a cache directory: its size limit, its lock, and an index that is never corrupt.

The directory is locked with ``flock`` so two daemons never share one cache. An index SQLite
cannot read (or of an unknown schema), or that fails ``PRAGMA quick_check``, is set aside and
replaced by one holding only what it still proves (peerdistd.store.healing): data without a
provable row is removed, never served.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path

from peerdistd.errors import ConfigError, LocalError
from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.healing import StoreNote, heal, salvage_cache
from peerdistd.store.index import CacheIndex, is_corruption

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
# Left by older versions' verify when SQLite found the index damaged: the next open heals it.
RESET_MARKER = "index.corrupt"


def cache_limit(directory: Path, limit_bytes: int | None, limit_percent: float) -> int:
    if limit_bytes is not None:
        if limit_bytes <= 0:
            raise ConfigError("cache.limit_bytes", f"must be positive, got {limit_bytes}")
        return limit_bytes
    if not 0 < limit_percent <= 100:
        raise ConfigError("cache.limit_percent", f"must be in (0, 100], got {limit_percent}")
    st = os.statvfs(directory)
    return int(st.f_blocks * st.f_frsize * limit_percent / 100)


def lock_directory(directory: Path) -> int:
    fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise LocalError(f"cache directory {directory} is in use by another process") from exc
    return fd


def open_index(directory: Path) -> tuple[CacheIndex, StoreNote | None]:
    """Open the directory's index; a damaged one is set aside and rebuilt (with a note).

    ``PRAGMA quick_check`` runs at every open: O(index size), milliseconds for a cache of
    gigabytes, and the only way to find a damaged page before a request trips on it.
    """
    path = directory / INDEX_FILE
    index = CacheIndex.open(path)
    reason = None
    if index is None:
        reason = "SQLite cannot read it"
    elif (directory / RESET_MARKER).exists():
        reason = "an earlier verify found it damaged"
    elif not index.quick_check():
        reason = "PRAGMA quick_check failed"
    else:
        reason = _load_held(index)
    if reason is None:
        assert index is not None
        return index, None
    if index is not None:
        index.close()
    return rebuild_index(directory, reason)


def _load_held(index: CacheIndex) -> str | None:
    """Read the segments' block counts into memory now, not at the first probe; a reason to
    rebuild if the file turns out damaged."""
    try:
        index.load_held()
    except sqlite3.Error as exc:
        if is_corruption(exc):
            return f"reading its segments failed: {exc}"
        raise LocalError(f"cache index: {exc}") from exc
    return None


def rebuild_index(directory: Path, reason: str) -> tuple[CacheIndex, StoreNote]:
    """Set the index aside, start a fresh one with what the old one proves (store.healing)."""
    path = directory / INDEX_FILE
    fresh: list[CacheIndex] = []

    def rebuild(aside: Path) -> tuple[int, int]:
        index = CacheIndex.open(path)
        if index is None:
            raise LocalError(f"cannot create a cache index in {directory}")
        fresh.append(index)
        return salvage_cache(aside, index, SegmentFiles(directory))

    note = heal("cache", path, reason, rebuild)
    (directory / RESET_MARKER).unlink(missing_ok=True)
    return fresh[0], note
