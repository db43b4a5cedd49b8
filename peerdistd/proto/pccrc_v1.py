"""MS-PCCRC V1 wire format (PROTOCOLS.md 1.3, [MS-PCCRC] 2.3); little-endian."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrc_hash import (
    V1_BLOCK_SIZE,
    V1_SEGMENT_SIZE,
    HashAlgorithm,
    segment_id,
)
from peerdistd.proto.pccrc_segment import Segment
from peerdistd.proto.pccrc_wire import Progress, need

VERSION = 0x0100  # bytes 00 01: minor 0, major 1
HEADER = struct.Struct("<HIIII")  # Version, dwHashAlgo, dwOffsetInFirstSegment,
# dwReadBytesInLastSegment, cSegments (2.3)
SEGMENT_FIXED = struct.Struct("<QII")  # ullOffsetInContent, cbSegment, cbBlockSize (2.3.1.1)
COUNT = struct.Struct("<I")  # cBlocks (2.3.1.2)

_V1_ALGORITHMS = {a.value: a for a in HashAlgorithm if a.version == 1}


def decode(data: memoryview, p: Progress) -> None:
    """Decode V1 content information into ``p``; raises Truncated or DecodeError."""
    need(data, 0, HEADER.size, "header")
    version, algo_id, first_offset, read_bytes, count = HEADER.unpack_from(data, 0)
    if version != VERSION:
        raise DecodeError(f"unknown content information version {version:#06x}", 0)
    algorithm = _V1_ALGORITHMS.get(algo_id)
    if algorithm is None:
        raise DecodeError(f"unknown V1 hash algorithm {algo_id:#x}", 2)
    p.version, p.algorithm, p.wire_range = 1, algorithm, read_bytes
    digest = algorithm.digest_size
    desc_size = SEGMENT_FIXED.size + 2 * digest
    pos = HEADER.size
    if count == 0:
        # Empty content (see pccrc module docstring): no segments and no range.
        if first_offset or read_bytes:
            raise DecodeError("a range needs at least one segment", 6)
        p.start = p.end = 0
        _finish(data, pos, p)
        return

    descs: list[tuple[int, int, bytes, bytes]] = []
    for i in range(count):
        need(data, pos, desc_size, f"segment description {i}")
        offset, length, block_size = SEGMENT_FIXED.unpack_from(data, pos)
        if block_size != V1_BLOCK_SIZE:
            raise DecodeError(f"cbBlockSize {block_size} is not {V1_BLOCK_SIZE}", pos + 12)
        if not 0 < length <= V1_SEGMENT_SIZE:
            raise DecodeError(f"cbSegment {length} outside 1..{V1_SEGMENT_SIZE}", pos + 8)
        if offset % V1_SEGMENT_SIZE:
            raise DecodeError("segment offset is not on the 32 MiB segment grid", pos)
        if descs:
            prev_offset, prev_length = descs[-1][0], descs[-1][1]
            if prev_length != V1_SEGMENT_SIZE:
                raise DecodeError(
                    "only the last segment may be shorter than 32 MiB", pos - desc_size + 8
                )
            if offset != prev_offset + prev_length:
                raise DecodeError("segments are not contiguous", pos)
        fixed = pos + SEGMENT_FIXED.size
        descs.append(
            (
                offset,
                length,
                bytes(data[fixed : fixed + digest]),
                bytes(data[fixed + digest : fixed + 2 * digest]),
            )
        )
        pos += desc_size

    first, last = descs[0], descs[-1]
    if first_offset >= first[1]:
        raise DecodeError("dwOffsetInFirstSegment is past the first segment", 6)
    start = first[0] + first_offset
    # PROTOCOLS 1.3 range rules: 0 = whole last segment; one segment: a length from start.
    if read_bytes == 0:
        end = last[0] + last[1]
    elif count == 1:
        end = start + read_bytes
    else:
        end = last[0] + read_bytes
    if end > last[0] + last[1]:
        raise DecodeError("dwReadBytesInLastSegment runs past the last segment", 10)
    p.start, p.end = start, end

    for i, (offset, length, hod, kp) in enumerate(descs):
        need(data, pos, COUNT.size, f"block count of segment {i}")
        (n_blocks,) = COUNT.unpack_from(data, pos)
        full = -(-length // V1_BLOCK_SIZE)
        # Lists start at block 0 and may only lose their tail (PROTOCOLS 1.3, pitfall 6).
        needed = (min(end, offset + length) - 1 - offset) // V1_BLOCK_SIZE + 1
        if not needed <= n_blocks <= full:
            raise DecodeError(f"cBlocks {n_blocks} outside {needed}..{full}", pos)
        need(data, pos + COUNT.size, n_blocks * digest, f"block hashes of segment {i}")
        base = pos + COUNT.size
        hashes = tuple(
            bytes(data[base + k * digest : base + (k + 1) * digest]) for k in range(n_blocks)
        )
        p.segments.append(
            Segment(
                index=offset // V1_SEGMENT_SIZE,
                offset=offset,
                length=length,
                block_size=V1_BLOCK_SIZE,
                hod=hod,
                secret=kp,
                segment_id=segment_id(algorithm, kp, hod),
                block_hashes=hashes,
            )
        )
        pos = base + n_blocks * digest
    _finish(data, pos, p)


def _finish(data: memoryview, pos: int, p: Progress) -> None:
    if pos != len(data):
        raise DecodeError(f"{len(data) - pos} trailing bytes after the content information", pos)
    p.complete = True


def encode(
    algorithm: HashAlgorithm, segments: Sequence[Segment], start: int, wire_range: int
) -> bytes:
    """Serialize V1 content information; the inverse of :func:`decode`."""
    first_offset = start - segments[0].offset if segments else 0
    parts = [HEADER.pack(VERSION, algorithm.value, first_offset, wire_range, len(segments))]
    for s in segments:
        parts += (SEGMENT_FIXED.pack(s.offset, s.length, s.block_size), s.hod, s.secret)
    for s in segments:
        parts.append(COUNT.pack(len(s.block_hashes)))
        parts += s.block_hashes
    return b"".join(parts)
