"""Segments and blocks of content information (PROTOCOLS.md 1.1-1.4)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from peerdistd.errors import InvalidParameter
from peerdistd.proto.pccrc_hash import (
    V1_BLOCK_SIZE,
    V1_SEGMENT_SIZE,
    V2_MAX_SEGMENT_SIZE,
    HashAlgorithm,
    segment_id,
    segment_secret,
)


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment: where it lies in the content, its hashes and keys.

    V1 ``block_hashes`` start at block 0 (a range CI may cut the tail); V2 has ``(hod,)``.
    """

    index: int
    offset: int
    length: int
    block_size: int
    hod: bytes
    secret: bytes
    segment_id: bytes
    block_hashes: tuple[bytes, ...]

    @property
    def end(self) -> int:
        return self.offset + self.length

    @property
    def block_count(self) -> int:
        """Blocks in the full segment (1 for V2, where a segment travels as one block)."""
        return -(-self.length // self.block_size)

    def block_span(self, index: int) -> tuple[int, int]:
        """Absolute ``[start, end)`` of block ``index``; the last block may be short."""
        if not 0 <= index < self.block_count:
            raise InvalidParameter(f"block index {index} outside segment {self.index}")
        start = self.offset + index * self.block_size
        return start, min(start + self.block_size, self.end)

    def blocks_meeting(self, start: int, end: int) -> range:
        """Indexes of the blocks of this segment that meet ``[start, end)``."""
        lo = max(start, self.offset)
        hi = min(end, self.end)
        if lo >= hi:
            return range(0)
        return range(
            (lo - self.offset) // self.block_size, (hi - 1 - self.offset) // self.block_size + 1
        )


@dataclass(frozen=True, slots=True)
class BlockRef:
    """A block (V1) or a whole segment (V2, index 0) that meets the content range.

    ``start``/``end`` span the full block, which is what its hash covers.
    """

    segment: Segment
    index: int
    start: int
    end: int
    hash: bytes


def segment_v1(
    algorithm: HashAlgorithm,
    index: int,
    offset: int,
    length: int,
    block_hashes: Sequence[bytes],
    ks: bytes,
) -> Segment:
    """A V1 segment from the hashes of *all* its blocks: HoD, Kp and HoHoDk (1.2)."""
    if algorithm.version != 1:
        raise InvalidParameter(f"{algorithm.label} is not a V1 hash algorithm")
    if not 0 < length <= V1_SEGMENT_SIZE:
        raise InvalidParameter(f"V1 segment length {length} outside 1..{V1_SEGMENT_SIZE}")
    if len(block_hashes) != -(-length // V1_BLOCK_SIZE):
        raise InvalidParameter("HoD needs the hash of every block of the segment")
    hashes = tuple(bytes(h) for h in block_hashes)
    hod = algorithm.digest(b"".join(hashes))
    kp = segment_secret(algorithm, ks, hod)
    return Segment(
        index=index,
        offset=offset,
        length=length,
        block_size=V1_BLOCK_SIZE,
        hod=hod,
        secret=kp,
        segment_id=segment_id(algorithm, kp, hod),
        block_hashes=hashes,
    )


def segment_v2(index: int, offset: int, data: bytes | memoryview, ks: bytes) -> Segment:
    """A V2 segment from its bytes: HoD = T(data), Kp, HoHoDk (1.2)."""
    return segment_v2_from_hod(index, offset, len(data), hashlib.sha512(data).digest()[:32], ks)


def segment_v2_from_hod(index: int, offset: int, length: int, hod: bytes, ks: bytes) -> Segment:
    """A V2 segment whose HoD was computed elsewhere (e.g. in a worker thread)."""
    if not 0 < length <= V2_MAX_SEGMENT_SIZE:
        raise InvalidParameter(f"V2 segment length {length} outside 1..{V2_MAX_SEGMENT_SIZE}")
    algorithm = HashAlgorithm.TRUNCATED_SHA512
    kp = segment_secret(algorithm, ks, hod)
    return Segment(
        index=index,
        offset=offset,
        length=length,
        block_size=length,
        hod=hod,
        secret=kp,
        segment_id=segment_id(algorithm, kp, hod),
        block_hashes=(hod,),
    )
