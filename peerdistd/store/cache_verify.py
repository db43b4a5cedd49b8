"""``BlockCache.verify``: check the index, re-hash every held block, clean the data tree.

SQLite's quick_check runs first: a damaged index is set aside and rebuilt from what it still
proves (see cache_heal) before the blocks are checked (a damaged row could vouch for bytes
that were never verified). Then one segment
at a time under the cache lock, so the daemon keeps serving from another thread in between:
blocks whose bytes are missing, short or differently hashed lose their rows; files no row
names (a crash between a commit and an unlink, or planted there) and non-regular entries are
removed; the running totals are then recomputed from the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from peerdistd.errors import PeerDistError, StoreDamaged
from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.cache_types import VerifyReport
from peerdistd.store.index import db_errors

if TYPE_CHECKING:
    from peerdistd.store.blockcache import BlockCache

Hasher = Callable[[int, bytes], bytes]


def _matches(hasher: Hasher, algorithm: int, data: bytes, digest: bytes) -> bool:
    try:
        return hasher(algorithm, data) == digest
    except PeerDistError:
        return False


def verify_cache(cache: BlockCache, hasher: Hasher) -> VerifyReport:
    """Check every block of ``cache`` with ``hasher(algorithm, data)``; drop what fails."""
    with cache._lock, db_errors("verify"):
        if not cache._index.quick_check():  # verify() heals it and runs again
            raise StoreDamaged("PRAGMA quick_check failed during verify")
        segments = cache._index.all_segments()
    blocks = bad = dropped = 0
    for rowid, record in segments:
        with cache._lock, db_errors("verify"):
            seg = cache._table.load(record.segment_id)
            if seg is None or seg.rowid != rowid:
                continue  # evicted or flushed meanwhile
            fd = cache._table.fd(seg)
            if fd is None:
                cache._files.remove(rowid)  # a symlink or other non-file planted there
            gone: list[tuple[int, int]] = []
            for index, length, digest in cache._index.blocks(rowid):
                blocks += 1
                offset = index * record.block_size
                data = b"" if fd is None else SegmentFiles.read(fd, offset, length)
                if len(data) != length or not _matches(hasher, record.algorithm, data, digest):
                    gone.append((index, length))
            stale = set(seg.lengths) - {i for i, _, _ in cache._index.blocks(rowid)}
            for index in stale:
                seg.lengths.pop(index)
            cache._drop_blocks(seg, gone)
            bad += len(gone)
            dropped += sum(length for _, length in gone)
    with cache._lock, db_errors("verify"):
        known = {rowid for rowid, _ in cache._index.all_segments()}
        orphans = 0
        for rowid, path in cache._files.rowids_on_disk():
            if rowid in known or (path.is_dir() and not path.is_symlink()):
                continue
            path.unlink(missing_ok=True)
            orphans += 1
        with cache._index.transaction():
            cache._index.recount()
    return VerifyReport(len(segments), blocks, bad, dropped, orphans)
