"""MS-PCCRC V2 wire format (PROTOCOLS.md 1.4, [MS-PCCRC] 2.4); big-endian, packed."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrc_hash import V2_MAX_SEGMENT_SIZE, HashAlgorithm, segment_id
from peerdistd.proto.pccrc_segment import Segment
from peerdistd.proto.pccrc_wire import Progress, Truncated, need

HEADER = struct.Struct(">BBBQQIQ")  # bMinorVersion, bMajorVersion, bHashAlgo, ullStartInContent,
# ullIndexOfFirstSegment, dwOffsetInFirstSegment, ullLengthOfRange (2.4): 31 bytes
CHUNK = struct.Struct(">BI")  # bChunkType, dwChunkDataLength (2.4.1.1)
SEGMENT_LENGTH = struct.Struct(">I")  # cbSegment, then HoD[32] and Kp[32] (2.4.1.2)
SEGMENT_SIZE = SEGMENT_LENGTH.size + 64
CHUNK_TYPE_SEGMENTS = 0x00
MAX_CHUNK_SEGMENTS = 0xFFFFFFFF // SEGMENT_SIZE  # what one dwChunkDataLength can hold

_ALGORITHM = HashAlgorithm.TRUNCATED_SHA512


def decode(data: memoryview, p: Progress) -> None:
    """Decode V2 content information into ``p``; raises Truncated or DecodeError."""
    need(data, 0, HEADER.size, "header")
    minor, major, algo_id, start_seg, first_index, first_offset, range_length = HEADER.unpack_from(
        data, 0
    )
    if (minor, major) != (0, 2):
        raise DecodeError(f"unknown content information version {major}.{minor}", 0)
    if algo_id != _ALGORITHM.value:
        raise DecodeError(f"unknown V2 hash algorithm {algo_id:#x}", 2)
    p.version, p.algorithm, p.wire_range, p.first_index = 2, _ALGORITHM, range_length, first_index
    pos = HEADER.size
    if pos == len(data):
        # No chunk at all: empty content (see pccrc module docstring).
        if first_offset or range_length:
            raise DecodeError("a range needs at least one segment", 19)
        p.start = p.end = start_seg
        p.complete = True
        return

    p.start = start_seg + first_offset
    if range_length:
        p.end = p.start + range_length
    offset = start_seg
    while pos < len(data):
        need(data, pos, CHUNK.size, "chunk header")
        chunk_type, chunk_length = CHUNK.unpack_from(data, pos)
        if chunk_type != CHUNK_TYPE_SEGMENTS:
            raise DecodeError(f"unknown chunk type {chunk_type:#x}", pos)
        if chunk_length == 0 or chunk_length % SEGMENT_SIZE:
            raise DecodeError(f"dwChunkDataLength {chunk_length} is not a multiple of 68", pos + 1)
        p.chunk_counts.append(0)
        pos += CHUNK.size
        for _ in range(chunk_length // SEGMENT_SIZE):
            need(data, pos, SEGMENT_SIZE, f"segment description {len(p.segments)}")
            (length,) = SEGMENT_LENGTH.unpack_from(data, pos)
            if not 0 < length <= V2_MAX_SEGMENT_SIZE:
                raise DecodeError(f"cbSegment {length} outside 1..{V2_MAX_SEGMENT_SIZE}", pos)
            if not p.segments and first_offset >= length:
                raise DecodeError("dwOffsetInFirstSegment is past the first segment", 19)
            if p.end is not None and offset >= p.end:
                raise DecodeError("segment lies past the end of the range", pos)
            hod = bytes(data[pos + 4 : pos + 36])
            kp = bytes(data[pos + 36 : pos + 68])
            p.segments.append(
                Segment(
                    index=first_index + len(p.segments),
                    offset=offset,
                    length=length,
                    block_size=length,
                    hod=hod,
                    secret=kp,
                    segment_id=segment_id(_ALGORITHM, kp, hod),
                    block_hashes=(hod,),
                )
            )
            p.chunk_counts[-1] += 1
            offset += length
            pos += SEGMENT_SIZE
    # The buffer ended on a chunk boundary: the chunks are all there (V2 has no count).
    if p.end is None:
        p.end = offset
    elif p.end > offset:
        # More chunks must follow (parse_partial), or ullLengthOfRange overruns (parse).
        raise Truncated("segments up to the end of the range", pos)
    p.complete = True


def encode(
    segments: Sequence[Segment],
    start: int,
    wire_range: int,
    first_index: int,
    chunk_counts: Sequence[int],
) -> bytes:
    """Serialize V2 content information; the inverse of :func:`decode`."""
    start_seg = segments[0].offset if segments else start
    first_offset = start - start_seg
    parts = [HEADER.pack(0, 2, _ALGORITHM.value, start_seg, first_index, first_offset, wire_range)]
    at = 0
    for n in chunk_counts:
        parts.append(CHUNK.pack(CHUNK_TYPE_SEGMENTS, n * SEGMENT_SIZE))
        for s in segments[at : at + n]:
            parts += (SEGMENT_LENGTH.pack(s.length), s.hod, s.secret)
        at += n
    return b"".join(parts)
