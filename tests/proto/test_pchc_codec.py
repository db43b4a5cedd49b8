"""MS-PCHC messages (PROTOCOLS.md 4): vectors, every prefix refused, Hypothesis round trips,
and the fuzz invariant that only DecodeError escapes a parser."""

from __future__ import annotations

import contextlib
import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.proto import pchc
from peerdistd.proto.pccrc import HashAlgorithm, segment_v1
from peerdistd.proto.pchc import (
    BatchedOffer,
    InitialOffer,
    ResponseCode,
    SegmentDescriptor,
    SegmentInfo,
)

SEG = bytes(range(32))
TAG = bytes(range(100, 116))
KS = hashlib.sha256(b"secret").digest()
DATA = random.Random(3).randbytes(3 * 65536 + 77)


def v1_segment() -> SegmentInfo:
    blocks = [DATA[i : i + 65536] for i in range(0, len(DATA), 65536)]
    hashes = [hashlib.sha256(b).digest() for b in blocks]
    segment = segment_v1(HashAlgorithm.SHA256, 0, 0, len(DATA), hashes, KS)
    return SegmentInfo(8282, TAG, HashAlgorithm.SHA256, segment, 0, len(DATA))


def test_initial_offer_vector() -> None:
    # MinorVersion 0, MajorVersion 1, Type 1 (big-endian), 4 padding bytes; Port 8282 is 20 5A
    # (what Microsoft's suite sends and Windows reads), 6 padding bytes; then the HoHoDk.
    wire = bytes.fromhex("00 01 0001 00000000 205A 000000000000") + SEG
    assert pchc.parse_request(wire) == InitialOffer(8282, SEG)
    assert pchc.serialize(InitialOffer(8282, SEG)) == wire


def test_batched_offer_vector() -> None:
    descriptor = SegmentDescriptor(65536, 100000, TAG, 0x01, SEG)
    wire = (
        bytes.fromhex("00 02 0003 00000000 0050 000000000000")
        + bytes.fromhex("00010000 000186A0 0010")  # BlockSize, SegmentSize, SizeOfContentTag
        + TAG
        + b"\x01"
        + SEG
    )
    assert len(wire) == 16 + 59  # descriptors are packed, 59 bytes each
    assert pchc.parse_request(wire) == BatchedOffer(80, (descriptor,))
    assert pchc.serialize(BatchedOffer(80, (descriptor,))) == wire


def test_segment_info_vector_and_verification() -> None:
    info = v1_segment()
    wire = pchc.serialize(info)
    # Header, tag, then MS-PCCRC V1 little-endian: Version 00 01, dwHashAlgo 0x800C, offset 0,
    # dwReadBytesInLastSegment = the segment's bytes, cSegments 1.
    assert wire[:16] == bytes.fromhex("00 01 0002 00000000 205A 000000000000")
    assert wire[16:32] == TAG
    assert wire[32:50] == bytes.fromhex("0001 0C800000 00000000") + len(DATA).to_bytes(
        4, "little"
    ) + bytes.fromhex("01000000")
    got = pchc.parse_request(wire)
    assert got == info and isinstance(got, SegmentInfo) and got.verified()
    assert got.segment.segment_id == info.segment.segment_id
    # A SEGMENT_INFO whose dwReadBytesInLastSegment is 0 is accepted (PROTOCOLS.md 4).
    zero = bytearray(wire)
    zero[16 + 16 + 10 : 16 + 16 + 14] = bytes(4)
    assert pchc.parse_request(bytes(zero)) == SegmentInfo(
        8282, TAG, HashAlgorithm.SHA256, info.segment, 0, 0
    )


def test_a_block_list_that_does_not_hash_to_hod_does_not_verify() -> None:
    info = v1_segment()
    wire = bytearray(pchc.serialize(info))
    wire[-1] ^= 1  # the last block hash
    got = pchc.parse_request(bytes(wire))
    assert isinstance(got, SegmentInfo) and not got.verified()


def test_responses() -> None:
    assert pchc.serialize_response(ResponseCode.INTERESTED) == bytes.fromhex("0000000101")
    assert pchc.parse_response(bytes.fromhex("0000000100")) is ResponseCode.OK
    for bad in (b"", bytes.fromhex("0000000201"), bytes.fromhex("0000000107"), bytes(6)):
        with pytest.raises(DecodeError):
            pchc.parse_response(bad)


def test_routes() -> None:
    assert pchc.route("/C574AC30-5794-4AEE-B1BB-6651C5315029") == 1
    assert pchc.route("/c574ac30-5794-4aee-b1bb-6651c5315029/") == 1
    assert pchc.route("/0131501B-D67F-491B-9A40-C4BF27BCB4D4/") == 2
    assert pchc.route("/116B50EB-ECE2-41ac-8429-9F9E963361B7/") is None


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (bytes.fromhex("01 01 0001 00000000 205A 000000000000") + SEG, "MinorVersion"),
        (bytes.fromhex("00 02 0001 00000000 205A 000000000000") + SEG, "MajorVersion"),
        (bytes.fromhex("00 01 0003 00000000 205A 000000000000") + bytes(59), "MajorVersion"),
        (bytes.fromhex("00 01 0009 00000000 205A 000000000000") + SEG, "unknown PCHC"),
        (bytes.fromhex("00 01 0001 00000000 205A 000000000000") + SEG[:20], "not 32"),
        (bytes.fromhex("00 02 0003 00000000 205A 000000000000"), "segment descriptors"),
        (bytes.fromhex("00 02 0003 00000000 205A 000000000000") + bytes(59 * 129), "1..128"),
        (bytes(pchc.MAX_REQUEST_SIZE + 1), "outside"),
    ],
)
def test_malformed_requests(wire: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        pchc.parse_request(wire)


@pytest.mark.parametrize(
    "msg",
    [
        InitialOffer(8282, SEG),
        v1_segment(),
        BatchedOffer(80, (SegmentDescriptor(65536, 9, TAG, 4, SEG),) * 3),
    ],
)
def test_every_prefix_is_refused(msg: pchc.Request) -> None:
    """Fed one byte at a time, no prefix passes for the whole message: it is refused, or (a
    batch cut between descriptors) it is exactly the descriptors it holds. The HTTP body's
    length frames a PCHC message; nothing in it says where it ends."""
    wire = pchc.serialize(msg)
    for cut in range(len(wire)):
        try:
            got = pchc.parse_request(wire[:cut])
        except DecodeError:
            continue
        assert isinstance(msg, BatchedOffer) and (cut - 16) % 59 == 0
        assert got == BatchedOffer(msg.port, msg.segments[: (cut - 16) // 59])
    assert pchc.parse_request(wire) == msg


ports = st.integers(0, 0xFFFF)
descriptors = st.builds(
    SegmentDescriptor,
    st.integers(1, 2**32 - 1),
    st.integers(1, 2**32 - 1),
    st.binary(min_size=16, max_size=16),
    st.sampled_from([1, 4]),
    st.binary(min_size=32, max_size=32),
)


@given(port=ports, seg=st.binary(min_size=32, max_size=32))
def test_initial_offer_round_trips(port: int, seg: bytes) -> None:
    assert pchc.parse_request(pchc.serialize(InitialOffer(port, seg))) == InitialOffer(port, seg)


@given(port=ports, batch=st.lists(descriptors, min_size=1, max_size=128).map(tuple))
def test_batched_offer_round_trips(port: int, batch: tuple[SegmentDescriptor, ...]) -> None:
    msg = BatchedOffer(port, batch)
    assert pchc.parse_request(pchc.serialize(msg)) == msg


@given(
    port=ports,
    tag=st.binary(min_size=16, max_size=16),
    blocks=st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=8),
    tail=st.integers(1, 65536),
    offset=st.integers(0, 65535),
)
def test_segment_info_round_trips(
    port: int, tag: bytes, blocks: list[bytes], tail: int, offset: int
) -> None:
    length = (len(blocks) - 1) * 65536 + tail
    segment = segment_v1(HashAlgorithm.SHA256, 1, 32 * 1024 * 1024, length, blocks, KS)
    msg = SegmentInfo(port, tag, HashAlgorithm.SHA256, segment, offset % length, length)
    got = pchc.parse_request(pchc.serialize(msg))
    assert got == msg and isinstance(got, SegmentInfo) and got.verified()


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_fuzz_only_decode_error_escapes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        pchc.parse_request(data)
    with contextlib.suppress(DecodeError):
        pchc.parse_response(data[:5])


@settings(max_examples=300)
@given(st.data())
def test_fuzz_mutated_messages(data: st.DataObject) -> None:
    wire = bytearray(pchc.serialize(v1_segment()))
    for _ in range(data.draw(st.integers(1, 6))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(DecodeError):
        pchc.parse_request(bytes(wire))
