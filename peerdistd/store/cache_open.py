"""Opening a cache directory: its size limit, its lock, and an index that is never corrupt.

The directory is locked with ``flock`` so two daemons never share one cache. An index SQLite
cannot read (or of an unknown schema) is deleted with every data file it described: a cache
can always be refilled, and data without its index rows must never be served.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from peerdistd.errors import ConfigError, LocalError
from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.index import CacheIndex

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
# Left by verify when SQLite finds the index damaged: the next open starts the cache empty.
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


def open_index(directory: Path) -> CacheIndex:
    """Open the directory's index; a corrupt one is replaced by an empty cache."""
    marker = directory / RESET_MARKER
    index = None if marker.exists() else CacheIndex.open(directory / INDEX_FILE)
    if index is None:
        log.warning("cache index in %s is corrupt; starting an empty cache", directory)
        for suffix in ("", "-wal", "-shm"):
            (directory / (INDEX_FILE + suffix)).unlink(missing_ok=True)
        SegmentFiles(directory).wipe()
        marker.unlink(missing_ok=True)
        index = CacheIndex.open(directory / INDEX_FILE)
        if index is None:
            raise LocalError(f"cannot create a cache index in {directory}")
    return index
