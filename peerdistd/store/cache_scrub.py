"""The background scrub: every indexed block re-hashed, slowly, forever; what fails is dropped.

A flipped bit on disk (or a file changed behind the daemon's back) must not wait for
``peerdist cache verify`` to be found. :meth:`Scrubber.step` checks the next blocks in
(segment, index) order from where the previous step stopped, about ``budget`` bytes at a time,
and wraps around; the daemon calls it at the configured rate (``cache.scrub_bytes_per_second``).
Each block is read under the cache's lock but hashed outside it, so reads are not held up; a
block that fails is dropped only if its row is still the one that was read, logged once and
counted (status ``scrub``, metrics ``peerdist_scrub_*``).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from peerdistd.errors import PeerDistError, StoreDamaged
from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.cache_heal import heal_in_place
from peerdistd.store.cache_types import block_digest
from peerdistd.store.index import db_errors

if TYPE_CHECKING:
    from peerdistd.store.blockcache import BlockCache

log = logging.getLogger(__name__)

_ROWS = 64  # block rows fetched per query


@dataclass(slots=True)
class ScrubStats:
    blocks_checked: int = 0
    bytes_checked: int = 0
    bad_blocks: int = 0  # found by the scrub and dropped
    passes: int = 0  # complete passes over a non-empty cache

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Scrubber:
    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache
        self.stats = ScrubStats()
        self._cursor = (0, -1)  # (segment rowid, block index) last checked
        self._pending: list[tuple[int, int, int, bytes]] = []
        self._checked_this_pass = 0

    def step(self, budget: int) -> int:
        """Check about ``budget`` bytes of blocks; returns the bytes checked (0 at the end of
        an empty pass)."""
        done = 0
        while done < budget:
            if not self._pending:
                try:
                    self._pending = self._next_rows()
                except StoreDamaged as exc:
                    heal_in_place(self.cache, str(exc))
                    self._restart()
                    return done
                if not self._pending:
                    if self._checked_this_pass:
                        self.stats.passes += 1
                    self._restart()
                    return done
            rowid, index, length, digest = self._pending.pop(0)
            self._cursor = (rowid, index)
            done += self._check(rowid, index, length, digest)
        return done

    def _restart(self) -> None:
        self._cursor = (0, -1)
        self._pending = []
        self._checked_this_pass = 0

    def _next_rows(self) -> list[tuple[int, int, int, bytes]]:
        cache = self.cache
        with cache._lock, db_errors("scrub"):
            return cache._index.blocks_after(*self._cursor, _ROWS)

    def _check(self, rowid: int, index: int, length: int, digest: bytes) -> int:
        cache = self.cache
        with cache._lock, db_errors("scrub"):
            found = cache._index.segment_by_rowid(rowid)
            if found is None:
                return 0  # dropped meanwhile
            seg = cache._table.load(found.segment_id)
            if seg is None or seg.rowid != rowid or index not in seg.lengths:
                return 0
            fd = cache._table.fd(seg)
            data = (
                b"" if fd is None else SegmentFiles.read(fd, index * seg.record.block_size, length)
            )
        try:  # hashing outside the lock: reads and writes go on meanwhile
            good = len(data) == length and block_digest(found.algorithm, data) == digest
        except PeerDistError:
            good = False
        self.stats.blocks_checked += 1
        self.stats.bytes_checked += len(data)
        self._checked_this_pass += 1
        if not good:
            self._drop(rowid, index, length, digest)
        return max(len(data), 1)

    def _drop(self, rowid: int, index: int, length: int, digest: bytes) -> None:
        cache = self.cache
        with cache._lock, db_errors("scrub"):
            found = cache._index.segment_by_rowid(rowid)
            seg = None if found is None else cache._table.load(found.segment_id)
            if seg is None or cache._index.block_hash(rowid, index) != digest:
                return  # replaced or dropped meanwhile: not the block that failed
            cache._drop_blocks(seg, [(index, length)])
        self.stats.bad_blocks += 1
        log.warning(
            "scrub: block %d of segment file %s does not match its hash; dropped",
            index,
            cache._files.path(rowid),
        )
