"""Content information: the parsed value, building it, ranges and block lookup."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hmac
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter

from peerdistd.errors import DecodeError, InvalidParameter
from peerdistd.proto import pccrc_v1, pccrc_v2
from peerdistd.proto.pccrc_hash import HashAlgorithm
from peerdistd.proto.pccrc_segment import BlockRef, Segment
from peerdistd.proto.pccrc_wire import Progress, Truncated

_OFFSET = attrgetter("offset")


@dataclass(frozen=True, slots=True)
class ContentInformation:
    """MS-PCCRC content information (V1 or V2) describing the content range [start, end).

    ``wire_range``, ``first_index`` and ``chunk_counts`` keep what the wire said so that
    :meth:`to_bytes` reproduces a parsed buffer byte for byte.
    """

    version: int
    algorithm: HashAlgorithm
    segments: tuple[Segment, ...]
    start: int
    end: int
    wire_range: int = 0  # V1 dwReadBytesInLastSegment / V2 ullLengthOfRange; 0 = to the end
    first_index: int = 0  # V2 ullIndexOfFirstSegment
    chunk_counts: tuple[int, ...] = ()  # V2: segment descriptions per chunk

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> ContentInformation:
        """Decode V1 or V2 content information; any malformation raises DecodeError."""
        progress = Progress()
        try:
            decode_into(memoryview(data).cast("B"), progress)
        except Truncated as exc:
            raise DecodeError(f"content information truncated ({exc.what})", exc.offset) from None
        return _from_progress(progress)

    def to_bytes(self) -> bytes:
        if self.version == 1:
            return pccrc_v1.encode(self.algorithm, self.segments, self.start, self.wire_range)
        return pccrc_v2.encode(
            self.segments, self.start, self.wire_range, self.first_index, self.chunk_counts
        )

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    @property
    def length(self) -> int:
        return self.end - self.start

    def blocks(self) -> Iterator[BlockRef]:
        """Every block (V1) or segment (V2) that meets [start, end), in content order."""
        for segment in self.segments:
            for index in segment.blocks_meeting(self.start, self.end):
                yield _ref(segment, index)

    def block_at(self, offset: int) -> BlockRef | None:
        """The block holding absolute ``offset``, or None outside [start, end)."""
        if not self.start <= offset < self.end:
            return None
        segment = self.segments[bisect.bisect_right(self.segments, offset, key=_OFFSET) - 1]
        return _ref(segment, (offset - segment.offset) // segment.block_size)

    def sub_range(self, offset: int, length: int) -> ContentInformation:
        """Content information for [offset, offset + length), as a server sends for a range."""
        if not self.segments and offset == self.start and length == 0:
            return self
        if length <= 0 or offset < self.start or offset + length > self.end:
            raise InvalidParameter(
                f"range {offset}+{length} is not inside the content range {self.start}-{self.end}"
            )
        if self.version == 1:
            return build_v1(self.algorithm, self.segments, offset, offset + length)
        return build_v2(self.segments, offset, offset + length)

    def verify_block(self, ref: BlockRef, data: bytes | memoryview) -> bool:
        """True when ``data`` is the whole block and hashes to its listed hash (2.2, 4.1.2)."""
        if len(data) != ref.end - ref.start:
            return False
        return hmac.compare_digest(self.algorithm.digest(data), ref.hash)


def _ref(segment: Segment, index: int) -> BlockRef:
    start, end = segment.block_span(index)
    return BlockRef(segment, index, start, end, segment.block_hashes[index])


def decode_into(data: memoryview, progress: Progress) -> None:
    """Dispatch on the two version bytes (``00 01`` V1, ``00 02`` V2, PROTOCOLS 1.3/1.4)."""
    if len(data) < 2:
        raise Truncated("version", 0)
    if data[0] != 0 or data[1] not in (1, 2):
        raise DecodeError(f"unknown content information version {data[1]}.{data[0]}", 0)
    progress.version = data[1]
    if progress.version == 1:
        pccrc_v1.decode(data, progress)
    else:
        pccrc_v2.decode(data, progress)


def _from_progress(p: Progress) -> ContentInformation:
    assert p.algorithm is not None and p.start is not None and p.end is not None
    return ContentInformation(
        version=p.version,
        algorithm=p.algorithm,
        segments=tuple(p.segments),
        start=p.start,
        end=p.end,
        wire_range=p.wire_range,
        first_index=p.first_index,
        chunk_counts=tuple(p.chunk_counts),
    )


def _select(segments: Sequence[Segment], start: int, end: int) -> list[Segment]:
    """The segments meeting [start, end), checked to be contiguous and to cover it."""
    chosen = [s for s in segments if s.offset < end and s.end > start]
    if not chosen or chosen[0].offset > start or chosen[-1].end < end:
        raise InvalidParameter(f"segments do not cover the range {start}-{end}")
    for prev, cur in itertools.pairwise(chosen):
        if cur.offset != prev.end:
            raise InvalidParameter("segments are not contiguous")
    return chosen


def build_v1(
    algorithm: HashAlgorithm, segments: Sequence[Segment], start: int, end: int
) -> ContentInformation:
    """V1 content information for [start, end) from segments with their block hashes.

    Segments outside the range are dropped and hash lists cut after the last block that
    meets it (PROTOCOLS 1.3); dwReadBytesInLastSegment is 0 when the range reaches the end
    of its last segment, as IIS sends for whole content.
    """
    if algorithm.version != 1:
        raise InvalidParameter(f"{algorithm.label} is not a V1 hash algorithm")
    if not segments and start == end == 0:
        return ContentInformation(1, algorithm, (), 0, 0)
    if start >= end:
        raise InvalidParameter(f"empty range {start}-{end}")
    chosen = _select(segments, start, end)
    trimmed = []
    for s in chosen:
        needed = s.blocks_meeting(start, end).stop
        if len(s.block_hashes) < needed:
            raise InvalidParameter(f"segment {s.index} lacks block hashes for the range")
        cut = s.block_hashes[:needed]
        trimmed.append(
            s if len(cut) == len(s.block_hashes) else dataclasses.replace(s, block_hashes=cut)
        )
    last = trimmed[-1]
    if end == last.end:
        wire_range = 0
    elif len(trimmed) == 1:
        wire_range = end - start
    else:
        wire_range = end - last.offset
    return ContentInformation(1, algorithm, tuple(trimmed), start, end, wire_range)


def build_v2(segments: Sequence[Segment], start: int, end: int) -> ContentInformation:
    """V2 content information for [start, end); ullLengthOfRange is 0 when the range ends
    with its last segment (pitfall 3: then iPXE, which reads it as an end, agrees)."""
    algorithm = HashAlgorithm.TRUNCATED_SHA512
    if not segments and start == end == 0:
        return ContentInformation(2, algorithm, (), 0, 0)
    if start >= end:
        raise InvalidParameter(f"empty range {start}-{end}")
    chosen = _select(segments, start, end)
    wire_range = 0 if end == chosen[-1].end else end - start
    step = pccrc_v2.MAX_CHUNK_SEGMENTS
    counts = tuple(min(step, len(chosen) - i) for i in range(0, len(chosen), step))
    return ContentInformation(
        2, algorithm, tuple(chosen), start, end, wire_range, chosen[0].index, counts
    )


@dataclass(frozen=True, slots=True)
class PartialContentInformation:
    """Content information received in pieces: the header fields and whole segments so far.

    V2 has no segment count: with ullLengthOfRange 0, ``complete`` means the bytes so far
    end on a chunk boundary and form valid content information; more chunks may follow.
    """

    complete: bool
    version: int | None
    algorithm: HashAlgorithm | None
    start: int | None
    end: int | None
    segments: tuple[Segment, ...]
    content_information: ContentInformation | None


def parse_partial(data: bytes | bytearray | memoryview) -> PartialContentInformation:
    """Parse a prefix of content information; DecodeError only for malformed bytes."""
    progress = Progress()
    with contextlib.suppress(Truncated):
        decode_into(memoryview(data).cast("B"), progress)
    return PartialContentInformation(
        complete=progress.complete,
        version=progress.version or None,
        algorithm=progress.algorithm,
        start=progress.start,
        end=progress.end,
        segments=tuple(progress.segments),
        content_information=_from_progress(progress) if progress.complete else None,
    )
