"""MS-PCCRR codec: derived wire examples, every message type, size caps, truncation."""

from __future__ import annotations

import struct

import pytest

from peerdistd.errors import DecodeError
from peerdistd.proto import pccrr
from peerdistd.proto.pccrr import (
    V1_0,
    V2_0,
    Blk,
    BlkList,
    BlockRange,
    CryptoAlgo,
    ExtensibleBlob,
    GetBlkList,
    GetBlks,
    GetSegList,
    NegoReq,
    NegoResp,
    ProtocolVersion,
    SegList,
    SegmentAge,
)

# shared/vectors/derived_wire_examples.json (derived from iPXE's pccrr.h, V1 iis-85 segment 0).
GETBLKS_HEX = (
    "0000000100000003000000440000000100000020491b217dbee2b5f12ca79b015e06f4bb"
    "e64f9745bad7867aef17de59927edce900000001000000000000000100000000"
)
NEGO_REQ_HEX = "000000010000000000000018000000000000000100000002"
SEGMENT_ID = bytes.fromhex("491b217dbee2b5f12ca79b015e06f4bbe64f9745bad7867aef17de59927edce9")

REQUESTS: list[pccrr.Request] = [
    NegoReq(V1_0, V2_0),
    GetBlkList(SEGMENT_ID, (BlockRange(0, 4), BlockRange(10, 2))),
    GetBlks(b"\x01\x02\x03", (BlockRange(7, 1),), vrf=b"v"),
    GetSegList(bytes(range(16)), (SEGMENT_ID, b"abcde"), blob=b"\x00\x01\x03\x00"),
]
RESPONSES: list[pccrr.Response] = [
    NegoResp(V1_0, V2_0),
    BlkList(SEGMENT_ID, (BlockRange(1, 3),), next_block_index=9),
    BlkList(b"odd", ()),
    Blk(SEGMENT_ID, 3, 4, b"\xaa" * 32, b"", b"\x55" * 16, crypto=CryptoAlgo.AES_128),
    Blk(b"12345", 0, 0, b"xyz", b"q", b"", crypto=CryptoAlgo.NONE),
    Blk(SEGMENT_ID, 5),
    SegList(b"\x11" * 16, (BlockRange(0, 2),), blob=b"\x00\x01\x03\x01\x00\x10\x27\x00"),
]


def test_derived_getblks_parses_to_its_fields_and_back() -> None:
    raw = bytes.fromhex(GETBLKS_HEX)
    msg = pccrr.parse_request(raw)
    assert msg == GetBlks(
        SEGMENT_ID, (BlockRange(0, 1),), vrf=b"", crypto=CryptoAlgo.AES_128, version=V1_0
    )
    assert pccrr.serialize(msg) == raw
    assert len(raw) == 0x44


def test_derived_nego_req_parses_to_its_fields_and_back() -> None:
    raw = bytes.fromhex(NEGO_REQ_HEX)
    msg = pccrr.parse_request(raw)
    assert msg == NegoReq(ProtocolVersion(1, 0), ProtocolVersion(2, 0), crypto=0, version=V1_0)
    assert pccrr.serialize(msg) == raw


def test_protocol_version_wire_order_is_minor_then_major() -> None:
    assert ProtocolVersion(1, 0).to_wire().to_bytes(4, "big") == b"\x00\x00\x00\x01"
    assert ProtocolVersion(2, 0).to_wire().to_bytes(4, "big") == b"\x00\x00\x00\x02"
    assert ProtocolVersion.from_wire(0x00010002) == ProtocolVersion(2, 1)
    assert ProtocolVersion(1, 5) < ProtocolVersion(2, 0)


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda m: type(m).__name__)
def test_request_round_trip(msg: pccrr.Request) -> None:
    raw = pccrr.serialize(msg)
    assert len(raw) % 4 == 0
    assert struct.unpack_from(">I", raw, 8)[0] == len(raw)
    assert pccrr.parse_request(raw) == msg


@pytest.mark.parametrize("msg", RESPONSES, ids=lambda m: type(m).__name__)
def test_response_round_trip_with_transport_header(msg: pccrr.Response) -> None:
    raw = pccrr.serialize_response(msg)
    assert struct.unpack_from(">I", raw)[0] == len(raw) - 4
    assert raw[4:] == pccrr.serialize(msg)
    assert pccrr.parse_response(raw) == msg


def test_blk_layout_is_the_one_ipxe_reads() -> None:
    msg = Blk(SEGMENT_ID, 3, 4, b"\xaa" * 32, b"", b"\x55" * 16, crypto=1)
    raw = pccrr.serialize_response(msg)
    expected = (
        struct.pack(">IIIII", 120, 1, 5, 120, 1)
        + struct.pack(">I", 32)
        + SEGMENT_ID
        + struct.pack(">III", 3, 4, 32)
        + b"\xaa" * 32
        + struct.pack(">II", 0, 16)
        + b"\x55" * 16
    )
    assert raw == expected


def test_padding_is_zero_and_relative_to_message_start() -> None:
    raw = pccrr.serialize(GetBlkList(b"abcde", (BlockRange(1, 1),)))
    assert raw[16:20] == b"\x00\x00\x00\x05"
    assert raw[20:28] == b"abcde\x00\x00\x00"
    assert raw[28:] == struct.pack(">III", 1, 1, 1)


def test_missing_final_pad_is_accepted() -> None:
    msg = GetBlks(SEGMENT_ID, (BlockRange(0, 1),), vrf=b"abc")
    raw = pccrr.serialize(msg)[:-1]
    raw = raw[:8] + struct.pack(">I", len(raw)) + raw[12:]
    assert pccrr.parse_request(raw) == msg


@pytest.mark.parametrize(
    "msg",
    [*REQUESTS, *RESPONSES],
    ids=[f"{type(m).__name__}-{n}" for n, m in enumerate([*REQUESTS, *RESPONSES])],
)
def test_every_truncation_is_a_decode_error(msg: pccrr.Message) -> None:
    raw = pccrr.serialize(msg)
    parse = pccrr.parse_request if msg.MSG_TYPE in pccrr.REQUEST_TYPES else _parse_bare_response
    unpadded = len(raw) - _final_pad(msg)
    for cut in range(len(raw)):
        with pytest.raises(DecodeError):
            parse(raw[:cut])  # MsgSize no longer matches
        if cut >= 16 and cut < unpadded:
            fixed = raw[:8] + struct.pack(">I", cut) + raw[12:cut]
            with pytest.raises(DecodeError):
                parse(fixed)  # the body parser itself sees the cut


def _final_pad(msg: pccrr.Message) -> int:
    last = getattr(msg, "iv", None) or getattr(msg, "vrf", None) or getattr(msg, "blob", None)
    return -len(last) % 4 if last else 0


def _parse_bare_response(raw: bytes) -> pccrr.Response:
    return pccrr.parse_response(struct.pack(">I", len(raw)) + raw)


def test_trailing_bytes_are_rejected() -> None:
    raw = bytes.fromhex(NEGO_REQ_HEX) + b"\x00\x00\x00\x00"
    raw = raw[:8] + struct.pack(">I", len(raw)) + raw[12:]
    with pytest.raises(DecodeError, match="trailing"):
        pccrr.parse_request(raw)


def test_sizes_are_capped_before_parsing() -> None:
    big = bytearray(pccrr.MAX_REQUEST_SIZE + 1)
    struct.pack_into(">IIII", big, 0, 1, 3, len(big), 1)
    with pytest.raises(DecodeError, match=r"outside 16\.\.98304"):
        pccrr.parse_request(bytes(big))
    body = bytearray(4 + pccrr.MAX_RESPONSE_SIZE + 4)
    struct.pack_into(">IIIII", body, 0, len(body) - 4, 1, 5, len(body) - 4, 1)
    with pytest.raises(DecodeError, match=r"outside 20\.\."):
        pccrr.parse_response(bytes(body))


def test_huge_counts_fail_before_allocating() -> None:
    raw = bytearray(pccrr.serialize(GetBlkList(SEGMENT_ID, (BlockRange(0, 1),))))
    struct.pack_into(">I", raw, 16 + 4 + 32, 200)
    with pytest.raises(DecodeError, match="overrun"):
        pccrr.parse_request(bytes(raw))
    struct.pack_into(">I", raw, 16 + 4 + 32, 257)
    with pytest.raises(DecodeError, match=r"outside 0..256"):
        pccrr.parse_request(bytes(raw))
    seg = bytearray(pccrr.serialize(GetSegList(bytes(16), (b"abcd",))))
    struct.pack_into(">I", seg, 32, 0xFFFFFFFF)
    with pytest.raises(DecodeError, match="overrun"):
        pccrr.parse_request(bytes(seg))
    blk = bytearray(pccrr.serialize_response(Blk(SEGMENT_ID, 0, 0, b"x" * 16)))
    struct.pack_into(">I", blk, 4 + 16 + 4 + 32 + 8, 0xFFFFFFF0)
    with pytest.raises(DecodeError, match="overruns"):
        pccrr.parse_response(bytes(blk))


def test_direction_and_type_are_checked() -> None:
    with pytest.raises(DecodeError, match="not a request"):
        pccrr.parse_request(pccrr.serialize(NegoResp()))
    with pytest.raises(DecodeError, match="not a response"):
        pccrr.parse_response(struct.pack(">I", 24) + bytes.fromhex(NEGO_REQ_HEX))
    unknown = struct.pack(">IIII", 1, 8, 16, 0)
    with pytest.raises(DecodeError, match="unknown MsgType 8") as info:
        pccrr.parse_request(unknown)
    assert info.value.offset == 4
    with pytest.raises(DecodeError, match="transport Size"):
        pccrr.parse_response(struct.pack(">I", 99) + pccrr.serialize(NegoResp()))


def test_extensible_blob_v1() -> None:
    blob = ExtensibleBlob(3, (SegmentAge(0, 10000), SegmentAge(2, 0xABCDEF)))
    raw = pccrr.serialize_extensible_blob(blob)
    assert raw == bytes.fromhex("00010302" + "00102700" + "02efcdab")
    assert pccrr.parse_extensible_blob(raw) == blob
    assert pccrr.parse_extensible_blob(b"\x00\x01\x01\x00") == ExtensibleBlob(1, ())
    for bad, why in [
        (b"\x00\x01\x03", "shorter"),
        (b"\x00\x02\x03\x00", "version 2"),
        (b"\x00\x01\x05\x00", "SegmentAgeUnits 5"),
        (b"\x00\x01\x03\x01", "need 8 bytes"),
    ]:
        with pytest.raises(DecodeError, match=why):
            pccrr.parse_extensible_blob(bad)
