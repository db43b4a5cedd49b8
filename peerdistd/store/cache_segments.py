"""The block cache's in-memory table of loaded segments (bounded, least recently used out).

A loaded segment holds its record, the lengths and hashes of its held blocks (at most 512 rows,
read once), its proven hash list and its open file, so the read path needs no SQL. Pinned
segments are never unloaded, so their descriptors stay valid while a block is read.

The table is bounded by blocks (what a loaded segment costs in memory: a V1 segment is up to
512 blocks, a V2 one a single block) and by segments; open files are bounded apart from it.
A bound of 1024 segments, descriptors included, made a node serving a 1 GiB V2 content (8,192
segments) load every segment it served from SQL and open its file again: a peer reading in
order always met the one evicted longest ago (docs/benchmarks.md, "The cache's lock").
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Final

from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.cache_types import SegmentRecord
from peerdistd.store.index import CacheIndex, db_errors

BLOCKS_LIMIT: Final = 1024 * 512  # loaded blocks: 1024 full V1 segments, as before
SEGMENTS_LIMIT: Final = 16384  # loaded segments (a V2 one: about a kilobyte in memory)
FILES_LIMIT: Final = 1024  # open segment files


class Seg:
    """A loaded segment: its row, record, held blocks (length, hash), proof and open file."""

    __slots__ = ("fd", "hashes", "lengths", "proven", "record", "rowid")

    def __init__(
        self,
        rowid: int,
        record: SegmentRecord,
        lengths: dict[int, int],
        hashes: dict[int, bytes] | None = None,
        proven: bytes | None = None,
    ) -> None:
        self.rowid = rowid
        self.record = record
        self.lengths = lengths
        self.hashes: dict[int, bytes] = {} if hashes is None else hashes
        # The full V1 block hash list that hashed to HoD ([MS-PCCRC] 2.2), concatenated.
        self.proven = proven
        self.fd: int | None = None

    def proven_hash(self, index: int) -> bytes | None:
        """The hash block ``index`` must have, if a proof says so (V2: the HoD itself)."""
        if self.record.version == 2:
            return self.record.hod if index == 0 else None
        if self.proven is None:
            return None
        size = len(self.record.hod)
        return self.proven[index * size : (index + 1) * size]


class SegmentTable:
    """Loaded segments by id; the cache's lock serialises every call."""

    def __init__(
        self,
        index: CacheIndex,
        files: SegmentFiles,
        pins: dict[bytes, int],
        *,
        blocks_limit: int = BLOCKS_LIMIT,
        segments_limit: int = SEGMENTS_LIMIT,
        files_limit: int = FILES_LIMIT,
    ) -> None:
        self._index = index
        self._files = files
        self._pins = pins
        self._blocks_limit = blocks_limit
        self._segments_limit = segments_limit
        self._files_limit = files_limit
        self._blocks = 0  # sum of the loaded segments' block counts
        self._open: OrderedDict[bytes, Seg] = OrderedDict()  # segments with an open file
        self._segs: OrderedDict[bytes, Seg] = OrderedDict()

    def segments(self) -> list[Seg]:
        return list(self._segs.values())

    def loaded(self, segment_id: bytes) -> Seg | None:
        return self._segs.get(segment_id)

    def get(self, segment_id: bytes) -> Seg | None:
        """The segment, loading it from the index on a miss (errors translated)."""
        seg = self._segs.get(segment_id)
        if seg is not None:
            self._segs.move_to_end(segment_id)
            return seg
        with db_errors("lookup"):
            return self.load(segment_id)

    def load(self, segment_id: bytes) -> Seg | None:
        seg = self._segs.get(segment_id)
        if seg is not None:
            self._segs.move_to_end(segment_id)
            return seg
        if not self._index.may_have_segment(segment_id):
            return None  # no row: known from memory (cache_held), no SQL
        found = self._index.segment(segment_id)
        if found is None:
            return None
        rowid, record = found
        rows = self._index.blocks(rowid)
        lengths = {index: length for index, length, _ in rows}
        hashes = {index: bytes(digest) for index, _, digest in rows}
        return self.add(Seg(rowid, record, lengths, hashes, self._index.proven(rowid)))

    def add(self, seg: Seg) -> Seg:
        segment_id = seg.record.segment_id
        old = self._segs.get(segment_id)
        if old is not None and old is not seg:
            self.forget(segment_id)
        if old is not seg:
            self._blocks += seg.record.block_count
        self._segs[segment_id] = seg
        self._segs.move_to_end(segment_id)
        if len(self._segs) > self._segments_limit or self._blocks > self._blocks_limit:
            # Oldest first, stopping as soon as enough are found: listing every entry on
            # each add cost a V2 server 9% of its CPU (thousands of segments per content).
            victims: list[bytes] = []
            count, blocks = len(self._segs), self._blocks
            for victim_id, victim in self._segs.items():
                if count <= self._segments_limit and blocks <= self._blocks_limit:
                    break
                if victim_id not in self._pins and victim is not seg:
                    victims.append(victim_id)
                    count -= 1
                    blocks -= victim.record.block_count
            for victim_id in victims:
                self.forget(victim_id)
        return seg

    def forget(self, segment_id: bytes) -> None:
        seg = self._segs.pop(segment_id, None)
        if seg is None:
            return
        self._blocks -= seg.record.block_count
        self._close(seg)

    def fd(self, seg: Seg) -> int | None:
        """The segment's descriptor; None if its file is missing (see :meth:`create_fd`)."""
        if seg.fd is None:
            seg.fd = self._files.open(seg.rowid)
            self._opened(seg)
        else:
            self._used(seg)
        return seg.fd

    def create_fd(self, seg: Seg) -> tuple[int, bool]:
        """The segment's descriptor, its file made if missing; whether it was made now."""
        if seg.fd is not None:
            self._used(seg)
            return seg.fd, False
        seg.fd, created = self._files.create(seg.rowid)
        self._opened(seg)
        return seg.fd, created

    def _used(self, seg: Seg) -> None:
        if self._open.get(seg.record.segment_id) is seg:
            self._open.move_to_end(seg.record.segment_id)

    def _opened(self, seg: Seg) -> None:
        """Count a descriptor just opened; close the least recently used ones past the
        bound (not a pinned segment's: a caller may be reading through it)."""
        if seg.fd is None:
            return
        self._open[seg.record.segment_id] = seg
        excess = len(self._open) - self._files_limit
        if excess <= 0:
            return
        victims: list[Seg] = []
        for victim_id, victim in self._open.items():
            if len(victims) == excess:
                break
            if victim_id not in self._pins and victim is not seg:
                victims.append(victim)
        for victim in victims:
            self._close(victim)

    def _close(self, seg: Seg) -> None:
        if self._open.get(seg.record.segment_id) is seg:
            del self._open[seg.record.segment_id]
        if seg.fd is not None:
            fd, seg.fd = seg.fd, None
            os.close(fd)

    def close(self) -> None:
        for segment_id in list(self._segs):
            self.forget(segment_id)
