"""Range content information (PROTOCOLS 1.3/1.4), block lookup, empty content."""

from __future__ import annotations

import hashlib
import struct

import pytest

from peerdistd.errors import InvalidParameter
from peerdistd.proto.pccrc import (
    V1_BLOCK_SIZE,
    V1_SEGMENT_SIZE,
    ContentInformation,
    HashAlgorithm,
    Segment,
    build_v1,
    build_v2,
    segment_v1,
    segment_v2_from_hod,
    server_secret_key,
)

MIB = 1024 * 1024
KS1 = server_secret_key(b"ranges", 1)
KS2 = server_secret_key(b"ranges", 2)
SHA256 = HashAlgorithm.SHA256


def fake_v1_segments(size: int, algorithm: HashAlgorithm = SHA256) -> list[Segment]:
    """Segments of a ``size``-byte content with made-up (but consistent) block hashes."""
    out = []
    for index, offset in enumerate(range(0, size, V1_SEGMENT_SIZE)):
        length = min(V1_SEGMENT_SIZE, size - offset)
        count = -(-length // V1_BLOCK_SIZE)
        hashes = [algorithm.digest(b"%d/%d" % (index, i)) for i in range(count)]
        out.append(segment_v1(algorithm, index, offset, length, hashes, KS1))
    return out


def fake_v2_segments(lengths: list[int]) -> list[Segment]:
    out, offset = [], 0
    for index, length in enumerate(lengths):
        hod = hashlib.sha512(b"%d" % index).digest()[:32]
        out.append(segment_v2_from_hod(index, offset, length, hod, KS2))
        offset += length
    return out


def whole_v1(size: int) -> ContentInformation:
    return build_v1(SHA256, fake_v1_segments(size), 0, size)


def v1_fields(raw: bytes) -> tuple[int, int, int]:
    """dwOffsetInFirstSegment, dwReadBytesInLastSegment, cSegments."""
    return struct.unpack_from("<III", raw, 6)


def v1_block_counts(info: ContentInformation) -> list[int]:
    return [len(s.block_hashes) for s in info.segments]


def test_whole_content_uses_zero_read_bytes_like_iis() -> None:
    info = whole_v1(3 * V1_SEGMENT_SIZE + 1000)
    assert v1_fields(info.to_bytes()) == (0, 0, 4)
    assert v1_block_counts(info) == [512, 512, 512, 1]
    assert ContentInformation.parse(info.to_bytes()) == info


def test_range_across_segments_like_spec_examples_3_3_and_3_5() -> None:
    info = whole_v1(3 * V1_SEGMENT_SIZE)
    start, end = 16 * MIB + 5, 2 * V1_SEGMENT_SIZE + 28 * MIB
    sub = info.sub_range(start, end - start)
    raw = sub.to_bytes()
    # The first segment's list starts at block 0 and is whole; the last is cut after the
    # block that holds the range end (28 MiB = 448 blocks); dwReadBytes counts from its start.
    assert v1_fields(raw) == (16 * MIB + 5, 28 * MIB, 3)
    assert v1_block_counts(sub) == [512, 512, 448]
    parsed = ContentInformation.parse(raw)
    assert parsed == sub and (parsed.start, parsed.end) == (start, end)
    assert [s.segment_id for s in sub.segments] == [s.segment_id for s in info.segments]


def test_range_inside_one_segment_keeps_blocks_from_block_zero() -> None:
    info = whole_v1(99710)
    sub = info.sub_range(70000, 100)
    assert v1_fields(sub.to_bytes()) == (70000, 100, 1)
    assert v1_block_counts(sub) == [2]
    refs = list(sub.blocks())
    assert [(r.index, r.start, r.end) for r in refs] == [(1, 65536, 99710)]
    first_block = info.sub_range(10, 20)
    assert v1_block_counts(first_block) == [1]
    assert [(r.index, r.start, r.end) for r in first_block.blocks()] == [(0, 0, 65536)]


def test_range_ending_at_a_segment_end_uses_zero() -> None:
    info = whole_v1(2 * V1_SEGMENT_SIZE + 10)
    sub = info.sub_range(100, V1_SEGMENT_SIZE - 100)
    assert v1_fields(sub.to_bytes()) == (100, 0, 1)
    assert ContentInformation.parse(sub.to_bytes()).end == V1_SEGMENT_SIZE


def test_range_starting_in_a_later_segment() -> None:
    info = whole_v1(3 * V1_SEGMENT_SIZE)
    start = V1_SEGMENT_SIZE + 3 * V1_BLOCK_SIZE + 7
    sub = info.sub_range(start, V1_SEGMENT_SIZE)
    assert [s.index for s in sub.segments] == [1, 2]
    assert v1_fields(sub.to_bytes()) == (3 * V1_BLOCK_SIZE + 7, 3 * V1_BLOCK_SIZE + 7, 2)
    assert v1_block_counts(sub) == [512, 4]
    refs = list(sub.blocks())
    assert refs[0].start == V1_SEGMENT_SIZE + 3 * V1_BLOCK_SIZE and refs[0].index == 3
    assert refs[-1].index == 3 and refs[-1].segment.index == 2
    assert len(refs) == 512 - 3 + 4


def test_one_segment_read_bytes_is_a_length_from_the_start() -> None:
    # Spec 3.1 says "whole content" with the full length instead of 0: both parse the same.
    info = whole_v1(128000)
    raw = bytearray(info.to_bytes())
    raw[10:14] = (128000).to_bytes(4, "little")
    parsed = ContentInformation.parse(bytes(raw))
    assert (parsed.start, parsed.end) == (0, 128000)
    assert parsed.to_bytes() == bytes(raw)  # and it serializes back as it came


def test_sub_range_of_sub_range_equals_direct_sub_range() -> None:
    info = whole_v1(3 * V1_SEGMENT_SIZE)
    outer = info.sub_range(1000, 2 * V1_SEGMENT_SIZE)
    assert outer.sub_range(V1_SEGMENT_SIZE - 5, 10) == info.sub_range(V1_SEGMENT_SIZE - 5, 10)
    assert info.sub_range(0, info.end) == info


def test_sub_range_refuses_ranges_outside() -> None:
    info = whole_v1(99710).sub_range(100, 1000)
    for offset, length in [(99, 10), (100, 0), (100, 1001), (1100, 1), (50, -1)]:
        with pytest.raises(InvalidParameter):
            info.sub_range(offset, length)


def test_block_at_and_verify_block() -> None:
    data = bytes(range(256)) * 400  # 102400 bytes: blocks of 65536 and 36864
    hashes = [hashlib.sha256(data[i : i + V1_BLOCK_SIZE]).digest() for i in (0, V1_BLOCK_SIZE)]
    seg = segment_v1(SHA256, 0, 0, len(data), hashes, KS1)
    info = build_v1(SHA256, [seg], 0, len(data))
    ref = info.block_at(70000)
    assert ref is not None and (ref.index, ref.start, ref.end) == (1, 65536, len(data))
    assert info.verify_block(ref, data[65536:])
    assert not info.verify_block(ref, data[65535:])  # wrong length
    assert not info.verify_block(ref, data[65536:-1] + b"x")
    assert info.block_at(len(data)) is None and info.block_at(-1) is None
    first = info.block_at(0)
    assert first is not None and info.verify_block(first, memoryview(data)[:65536])


def test_segment_block_spans() -> None:
    seg = fake_v1_segments(V1_SEGMENT_SIZE + 5)[1]
    assert seg.block_count == 1 and seg.block_span(0) == (V1_SEGMENT_SIZE, V1_SEGMENT_SIZE + 5)
    full = fake_v1_segments(V1_SEGMENT_SIZE)[0]
    assert full.block_count == 512 and full.block_span(511) == (511 * 65536, V1_SEGMENT_SIZE)
    with pytest.raises(InvalidParameter):
        full.block_span(512)


def test_v2_range_like_spec_example_3_7() -> None:
    info = build_v2(fake_v2_segments([0xF000, 0x10000, 0x8000]), 0, 0x27000)
    sub = info.sub_range(0xF000 + 0xA000, 0x2800)
    raw = sub.to_bytes()
    start, index, offset, length = struct.unpack_from(">QQIQ", raw, 3)
    assert (start, index, offset, length) == (0xF000, 1, 0xA000, 0x2800)
    assert [s.index for s in sub.segments] == [1] and len(raw) == 31 + 5 + 68
    assert ContentInformation.parse(raw) == sub
    assert [(r.index, r.start, r.end) for r in sub.blocks()] == [(0, 0xF000, 0x1F000)]


def test_v2_range_to_the_end_uses_zero_length() -> None:
    info = build_v2(fake_v2_segments([40000, 50000, 60000]), 0, 150000)
    sub = info.sub_range(45000, 105000)
    start, index, offset, length = struct.unpack_from(">QQIQ", sub.to_bytes(), 3)
    assert (start, index, offset, length) == (40000, 1, 5000, 0)
    assert [(r.segment.index, r.start, r.end) for r in sub.blocks()] == [
        (1, 40000, 90000),
        (2, 90000, 150000),
    ]
    assert sub.block_at(89999) is not None and sub.block_at(44999) is None


def test_v2_many_chunks_parse_and_keep_their_split() -> None:
    info = build_v2(fake_v2_segments([1000, 2000, 3000]), 0, 6000)
    assert info.chunk_counts == (3,)
    raw = bytearray(info.to_bytes()[:31])
    for seg in info.segments:  # one chunk per segment: also valid and must round-trip
        raw += (
            b"\x00" + (68).to_bytes(4, "big") + seg.length.to_bytes(4, "big") + seg.hod + seg.secret
        )
    parsed = ContentInformation.parse(bytes(raw))
    assert parsed.chunk_counts == (1, 1, 1) and parsed.segments == info.segments
    assert parsed.to_bytes() == bytes(raw)


def test_empty_content_v1_and_v2() -> None:
    v1 = build_v1(SHA256, [], 0, 0)
    assert v1.to_bytes() == bytes.fromhex("00010c800000") + bytes(12)
    v2 = build_v2([], 0, 0)
    assert v2.to_bytes() == bytes.fromhex("000204") + bytes(28)
    for info in (v1, v2):
        parsed = ContentInformation.parse(info.to_bytes())
        assert parsed == info and (parsed.start, parsed.end, parsed.segments) == (0, 0, ())
        assert list(parsed.blocks()) == [] and parsed.block_at(0) is None
        assert parsed.sub_range(0, 0) is parsed
        with pytest.raises(InvalidParameter):
            parsed.sub_range(0, 1)


def test_build_refuses_inconsistent_input() -> None:
    segs = fake_v1_segments(2 * V1_SEGMENT_SIZE)
    with pytest.raises(InvalidParameter):
        build_v1(SHA256, [segs[1]], 0, 10)  # does not cover the range
    with pytest.raises(InvalidParameter):
        build_v1(SHA256, segs, 10, 10)
    with pytest.raises(InvalidParameter):
        build_v1(HashAlgorithm.TRUNCATED_SHA512, segs, 0, 10)
    gap = fake_v2_segments([1000, 1000])
    with pytest.raises(InvalidParameter):
        build_v2([gap[0], fake_v2_segments([1000, 1000, 1000])[2]], 0, 1500)
