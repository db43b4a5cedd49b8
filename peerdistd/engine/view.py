"""What a content handle knows of its content: the range and the blocks described so far.

Content information may arrive in pieces (PeerDist AddContentInformation); a view is built from
whatever segments are fully described, and rebuilt as more arrives. Blocks are V1 blocks or,
for V2, whole segments (PROTOCOLS.md 1.4: one block per segment, as iPXE models it).
"""

from __future__ import annotations

import bisect
import hashlib
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from peerdistd import errors
from peerdistd.proto import pccrc
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm, Segment


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ContentView:
    version: int
    algorithm: HashAlgorithm
    start: int  # absolute start of the handle's range
    end: int  # absolute end (exclusive)
    segments: tuple[Segment, ...]  # described so far, in content order
    complete: bool
    # Segment offsets, for bisect: a V2 content has a segment per 64 KiB or so (~16,000 in
    # 1 GiB), and every block lookup listed them all again (docs/benchmarks.md, LAN speed).
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(s.offset for s in self.segments))

    @property
    def size(self) -> int:
        return self.end - self.start

    def _segment_at(self, offset: int) -> Segment | None:
        pos = bisect.bisect_right(self._starts, offset) - 1
        if pos < 0:
            return None
        seg = self.segments[pos]
        return seg if offset < seg.offset + seg.length else None

    def block_at(self, offset: int) -> BlockRef | None:
        """The described block holding absolute ``offset`` (in or outside the range)."""
        seg = self._segment_at(offset)
        if seg is None:
            return None
        index = (offset - seg.offset) // seg.block_size
        if index >= len(seg.block_hashes):
            return None  # V1 lists may stop after the last block meeting the range (1.3)
        start, end = seg.block_span(index)
        return BlockRef(seg, index, start, end, seg.block_hashes[index])

    def blocks_from(self, offset: int, limit: int | None = None) -> Iterator[BlockRef]:
        """Consecutive described blocks from the one holding ``offset`` up to ``limit``."""
        limit = self.end if limit is None else min(limit, self.end)
        while offset < limit:
            seg = self._segment_at(offset)
            if seg is None:
                return
            hashes = seg.block_hashes
            index = (offset - seg.offset) // seg.block_size
            while offset < limit:  # along the segment without looking it up again
                if index >= len(hashes):
                    if offset < seg.offset + seg.length:
                        return  # V1 lists may stop after the last block meeting the range
                    break
                start, end = seg.block_span(index)
                yield BlockRef(seg, index, start, end, hashes[index])
                offset = end
                index += 1

    def blocks_in(self, start: int, end: int) -> Iterator[BlockRef]:
        """Every described block meeting ``[start, end)``, wherever the handle's range is."""
        for seg in self.segments:
            if seg.offset + seg.length <= start or seg.offset >= end:
                continue
            first = max(0, (start - seg.offset) // seg.block_size)
            for index in range(first, len(seg.block_hashes)):
                b_start, b_end = seg.block_span(index)
                if b_start >= end:
                    break
                yield BlockRef(seg, index, b_start, b_end, seg.block_hashes[index])

    def segments_starting(self, lo: int, hi: int) -> Sequence[Segment]:
        """The segments whose first byte lies in ``[lo, hi)``, in order."""
        return self.segments[
            bisect.bisect_left(self._starts, lo) : bisect.bisect_left(self._starts, hi)
        ]

    def segment_ids(
        self, start: int | None = None, end: int | None = None, limit: int | None = None
    ) -> list[bytes]:
        """Ids of the segments overlapping ``[start, end)``, in order; the first ``limit``
        only, if given (a V2 read asks about a window of a content of thousands)."""
        lo = self.start if start is None else start
        hi = self.end if end is None else end
        first = max(0, bisect.bisect_right(self._starts, lo) - 1)
        last = bisect.bisect_left(self._starts, hi)
        if limit is not None:
            # One more than asked for: the first may end before ``lo`` and be skipped.
            last = min(last, first + limit + 1)
        ids = [
            s.segment_id
            for s in self.segments[first:last]
            if s.offset < hi and s.offset + s.length > lo
        ]
        return ids if limit is None else ids[:limit]


class ViewCache:
    """Parsed complete content information shared by every handle opened with the same bytes.

    A thousand handles on one large content then hold one parsed copy, not a thousand
    (a 1 GiB V1 content's hash lists alone are about 2 MB parsed).
    """

    def __init__(self) -> None:
        self._views: weakref.WeakValueDictionary[bytes, ContentView] = weakref.WeakValueDictionary()

    def view(self, data: bytes) -> ContentView:
        key = hashlib.sha256(data).digest()
        cached = self._views.get(key)
        if cached is not None:
            return cached
        view = view_from_bytes(data)
        if view.complete:
            self._views[key] = view
        return view


def view_from_bytes(data: bytes) -> ContentView:
    """Parse complete or partial content information into a view; INVALID_DATA if bad."""
    try:
        partial = pccrc.parse_partial(data)
    except errors.DecodeError as exc:
        raise errors.InvalidData(f"malformed content information: {exc}") from exc
    if partial.start is None or partial.version is None or partial.algorithm is None:
        raise errors.InvalidData("the first part must hold the whole content information header")
    end = partial.end
    if end is None:  # V2 with ullLengthOfRange 0: the end is known once all chunks are in
        end = max([partial.start, *(s.offset + s.length for s in partial.segments)])
    for seg in partial.segments:
        _check_segment(partial.algorithm, seg)
    return ContentView(
        partial.version,
        partial.algorithm,
        partial.start,
        end,
        tuple(partial.segments),
        partial.complete,
    )


def _check_segment(algorithm: HashAlgorithm, seg: pccrc.Segment) -> None:
    """[MS-PCCRC] 2.2: with the full V1 hash list, the list must hash to HoD."""
    if algorithm is HashAlgorithm.TRUNCATED_SHA512:
        return
    full_list = len(seg.block_hashes) == seg.block_count
    if full_list and algorithm.digest(b"".join(seg.block_hashes)) != seg.hod:
        raise errors.InvalidData(f"segment {seg.index}: the block hashes do not hash to its HoD")
