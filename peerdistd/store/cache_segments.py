"""The block cache's in-memory table of loaded segments (bounded, least recently used out).

A loaded segment holds its record, the lengths and hashes of its held blocks (at most 512 rows,
read once), its proven hash list and its open file, so the read path needs no SQL. Pinned
segments are never unloaded, so their descriptors stay valid while a block is read.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.cache_types import SegmentRecord
from peerdistd.store.index import CacheIndex, db_errors


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
        self, index: CacheIndex, files: SegmentFiles, pins: dict[bytes, int], limit: int = 1024
    ) -> None:
        self._index = index
        self._files = files
        self._pins = pins
        self._limit = limit
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
        self._segs[seg.record.segment_id] = seg
        if len(self._segs) > self._limit:
            # Oldest first, stopping as soon as enough are found: listing every entry on
            # each add cost a V2 server 9% of its CPU (thousands of segments per content).
            excess = len(self._segs) - self._limit
            victims: list[bytes] = []
            for segment_id in self._segs:
                if len(victims) == excess:
                    break
                if segment_id not in self._pins:
                    victims.append(segment_id)
            for segment_id in victims:
                self.forget(segment_id)
        return seg

    def forget(self, segment_id: bytes) -> None:
        seg = self._segs.pop(segment_id, None)
        if seg is not None and seg.fd is not None:
            os.close(seg.fd)

    def fd(self, seg: Seg) -> int | None:
        """The segment's descriptor; None if its file is missing (see :meth:`create_fd`)."""
        if seg.fd is None:
            seg.fd = self._files.open(seg.rowid)
        return seg.fd

    def create_fd(self, seg: Seg) -> tuple[int, bool]:
        """The segment's descriptor, its file made if missing; whether it was made now."""
        if seg.fd is not None:
            return seg.fd, False
        seg.fd, created = self._files.create(seg.rowid)
        return seg.fd, created

    def close(self) -> None:
        for segment_id in list(self._segs):
            self.forget(segment_id)
