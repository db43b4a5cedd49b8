"""MS-PCCRR peer retrieval messages: sans-IO parse/serialize pairs (PROTOCOLS.md section 2).

All integers are big-endian; variable fields are padded to 4 bytes relative to the message
start (2.2). Sizes are capped before anything is parsed; only :class:`DecodeError` escapes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, TypeAlias

from peerdistd.errors import DecodeError

# 2.1: exact case and trailing slash; iPXE builds the URL the same way.
MAGIC_PATH: Final = "/116B50EB-ECE2-41ac-8429-9F9E963361B7/"
# A peerdistd extension, not in [MS-PCCRR]: a GETBLKS posted here for a range of N blocks is
# answered with up to RUN_LIMIT MSG_BLK responses (each with its transport header) back to
# back in one HTTP body, one per block of the range. One exchange per 64 KiB block is what
# kept two daemons far below LAN speed. Other servers answer 404 here; clients then use
# MAGIC_PATH, one block per request, as Windows and iPXE do.
#
# The body may also hold several GETBLKS back to back, each a standard message with its own
# MsgSize, each for one range of one segment: a run across segments. V2 content information
# makes every segment one block of at most 128 KiB (PROTOCOLS.md 1.4), so a run within one
# segment is one block; consecutive segments of one content go as one run instead. The
# answer is one MSG_BLK per block asked for, in the order asked, each encrypted with its own
# segment's key; a server may answer fewer (a prefix), never more.
RUN_PATH: Final = MAGIC_PATH + "runs"
RUN_LIMIT: Final = 16  # blocks per run answer: 1 MiB of V1 blocks
RUN_BYTES: Final = 1 << 20  # block bytes per run answer (V2: about 8 segments)
HEADER_SIZE: Final = 16
TRANSPORT_HEADER_SIZE: Final = 4
MAX_REQUEST_SIZE: Final = 98304  # 2.2: request messages are 16..98304 bytes
MAX_RESPONSE_SIZE: Final = 393216  # 2.2 / pitfall 7: a 64 KiB block needs more than 96 KiB
MAX_BLOCK_RANGES: Final = 256  # 2.2.4.2/2.2.4.3: effective range count 1..256
# A count of 0 still parses: Microsoft's conformance suite sends GETBLKLIST with no ranges and
# expects an empty BLKLIST; what zero means is the server's decision (pccrr_server).
REQUEST_ID_SIZE: Final = 16  # 2.2.4.4

_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_HEADER = struct.Struct(">IIII")
_BLOB_HEAD = struct.Struct(">HBB")  # 2.2.6.1: version u16, units u8, count u8
_AGE = struct.Struct(">BBBB")  # 2.2.1.5: index, low, mid, high


class MsgType(IntEnum):
    """MESSAGE_HEADER.MsgType (2.2.3)."""

    NEGO_REQ = 0
    NEGO_RESP = 1
    GETBLKLIST = 2
    GETBLKS = 3
    BLKLIST = 4
    BLK = 5
    GETSEGLIST = 6
    SEGLIST = 7


class CryptoAlgo(IntEnum):
    """MESSAGE_HEADER.CryptoAlgoId (2.2.3)."""

    NONE = 0
    AES_128 = 1
    AES_192 = 2
    AES_256 = 3


@dataclass(frozen=True, slots=True, order=True)
class ProtocolVersion:
    """ProtVer: bytes 0-1 are the minor version, bytes 2-3 the major (2.2.3)."""

    major: int
    minor: int = 0

    @classmethod
    def from_wire(cls, value: int) -> ProtocolVersion:
        return cls(value & 0xFFFF, value >> 16)

    def to_wire(self) -> int:
        return (self.minor << 16) | self.major

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


V1_0: Final = ProtocolVersion(1, 0)
V2_0: Final = ProtocolVersion(2, 0)


@dataclass(frozen=True, slots=True)
class Header:
    """The 16-byte MESSAGE_HEADER; ``msg_type`` stays an int so unknown types can be judged."""

    version: ProtocolVersion
    msg_type: int
    size: int
    crypto: int


@dataclass(frozen=True, slots=True)
class BlockRange:
    """BLOCK_RANGE / SEGMENT_RANGE (2.2.1.2): ``count`` items from ``index``."""

    index: int
    count: int

    @property
    def end(self) -> int:
        return self.index + self.count


@dataclass(frozen=True, slots=True)
class NegoReq:
    min_version: ProtocolVersion = V1_0
    max_version: ProtocolVersion = V1_0
    crypto: int = CryptoAlgo.NONE
    version: ProtocolVersion = V1_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.NEGO_REQ


@dataclass(frozen=True, slots=True)
class NegoResp:
    min_version: ProtocolVersion = V1_0
    max_version: ProtocolVersion = V1_0
    crypto: int = CryptoAlgo.NONE
    version: ProtocolVersion = V1_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.NEGO_RESP


@dataclass(frozen=True, slots=True)
class GetBlkList:
    segment_id: bytes
    ranges: tuple[BlockRange, ...]
    crypto: int = CryptoAlgo.NONE
    version: ProtocolVersion = V1_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.GETBLKLIST


@dataclass(frozen=True, slots=True)
class GetBlks:
    segment_id: bytes
    ranges: tuple[BlockRange, ...]
    vrf: bytes = b""
    crypto: int = CryptoAlgo.AES_128  # 2.2.3: a client SHOULD ask for AES-128
    version: ProtocolVersion = V1_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.GETBLKS


@dataclass(frozen=True, slots=True)
class BlkList:
    segment_id: bytes
    ranges: tuple[BlockRange, ...]
    next_block_index: int = 0
    crypto: int = CryptoAlgo.NONE
    version: ProtocolVersion = V1_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.BLKLIST


@dataclass(frozen=True, slots=True)
class Blk:
    """MSG_BLK (2.2.5.3); an empty ``block`` means "not held" (or busy, 3.2.5.3)."""

    segment_id: bytes
    block_index: int
    next_block_index: int = 0
    block: bytes = b""
    vrf: bytes = b""
    iv: bytes = b""
    crypto: int = CryptoAlgo.NONE
    version: ProtocolVersion = V1_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.BLK


@dataclass(frozen=True, slots=True)
class GetSegList:
    request_id: bytes
    segment_ids: tuple[bytes, ...]
    blob: bytes = b""
    crypto: int = CryptoAlgo.NONE
    version: ProtocolVersion = V2_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.GETSEGLIST


@dataclass(frozen=True, slots=True)
class SegList:
    request_id: bytes
    ranges: tuple[BlockRange, ...]
    blob: bytes = b""
    crypto: int = CryptoAlgo.NONE
    version: ProtocolVersion = V2_0
    MSG_TYPE: ClassVar[MsgType] = MsgType.SEGLIST


Request: TypeAlias = NegoReq | GetBlkList | GetBlks | GetSegList
Response: TypeAlias = NegoResp | BlkList | Blk | SegList
Message: TypeAlias = Request | Response

REQUEST_TYPES: Final = frozenset(
    {MsgType.NEGO_REQ, MsgType.GETBLKLIST, MsgType.GETBLKS, MsgType.GETSEGLIST}
)


class _Reader:
    """A cursor over one message; alignment is relative to ``base`` (2.2.4.2 ZeroPad)."""

    __slots__ = ("base", "data", "end", "pos")

    def __init__(self, data: memoryview, base: int, start: int) -> None:
        self.data = data
        self.base = base
        self.pos = start
        self.end = len(data)

    def u32(self) -> int:
        if self.pos + 4 > self.end:
            raise DecodeError("truncated u32", self.pos)
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def raw(self, size: int) -> bytes:
        if size > self.end - self.pos:
            raise DecodeError(f"field of {size} bytes overruns the message", self.pos)
        value = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return value

    def sized(self) -> bytes:
        """A u32 length, that many bytes, then 0-3 pad bytes (optional at the very end)."""
        value = self.raw(self.u32())
        pad = -(self.pos - self.base) % 4
        if pad and self.pos != self.end:
            if self.pos + pad > self.end:
                raise DecodeError("truncated padding", self.pos)
            self.pos += pad
        return value

    def ranges(self, limit: int | None) -> tuple[BlockRange, ...]:
        count = self.u32()
        # Cap the count before allocating: by the spec limit and by the bytes actually left.
        if limit is not None and count > limit:
            raise DecodeError(f"range count {count} outside 0..{limit}", self.pos - 4)
        if count * 8 > self.end - self.pos:
            raise DecodeError(f"{count} ranges overrun the message", self.pos - 4)
        start, self.pos = self.pos, self.pos + count * 8
        return tuple(BlockRange(i, n) for i, n in _U32X2.iter_unpack(self.data[start : self.pos]))

    def finish(self) -> None:
        if self.pos != self.end:
            raise DecodeError(f"{self.end - self.pos} trailing bytes", self.pos)


def parse_header(data: bytes | bytearray | memoryview, offset: int = 0) -> Header:
    """The MESSAGE_HEADER at ``offset``; MsgSize must cover exactly the rest of ``data``."""
    if len(data) - offset < HEADER_SIZE:
        raise DecodeError("shorter than the 16-byte message header", offset)
    version, msg_type, size, crypto = _HEADER.unpack_from(data, offset)
    if size != len(data) - offset:
        raise DecodeError(f"MsgSize {size} but {len(data) - offset} bytes", offset + 8)
    return Header(ProtocolVersion.from_wire(version), msg_type, size, crypto)


def parse_request(data: bytes | bytearray | memoryview) -> Request:
    """An HTTP POST body (one message, no transport header, 2.1)."""
    if not HEADER_SIZE <= len(data) <= MAX_REQUEST_SIZE:
        raise DecodeError(f"request of {len(data)} bytes outside 16..{MAX_REQUEST_SIZE}")
    msg = _parse(memoryview(data), 0, requests=True)
    assert isinstance(msg, NegoReq | GetBlkList | GetBlks | GetSegList)
    return msg


def parse_run_request(data: bytes | bytearray | memoryview) -> tuple[Request, ...]:
    """A RUN_PATH body: one or more request messages back to back, each with its own MsgSize
    (no transport header, no length prefix). One message parses as :func:`parse_request`."""
    if not HEADER_SIZE <= len(data) <= MAX_REQUEST_SIZE:
        raise DecodeError(f"request of {len(data)} bytes outside 16..{MAX_REQUEST_SIZE}")
    view = memoryview(data)
    out: list[Request] = []
    pos = 0
    while pos < len(view):
        if len(view) - pos < HEADER_SIZE:
            raise DecodeError("a message cut inside its 16-byte header", pos)
        (size,) = _U32.unpack_from(view, pos + 8)
        if not HEADER_SIZE <= size <= len(view) - pos:
            raise DecodeError(f"MsgSize {size} but {len(view) - pos} bytes left", pos + 8)
        msg = _parse(view[pos : pos + size], 0, requests=True)
        assert isinstance(msg, NegoReq | GetBlkList | GetBlks | GetSegList)
        out.append(msg)
        pos += size
    return tuple(out)


def serialize_run_request(messages: Sequence[Request]) -> bytes:
    """Request messages back to back, as a RUN_PATH body (:func:`parse_run_request`)."""
    return b"".join(serialize(m) for m in messages)


def parse_response(data: bytes | bytearray | memoryview) -> Response:
    """An HTTP response body: TRANSPORT_RESPONSE_HEADER then one message (2.1)."""
    limit = TRANSPORT_HEADER_SIZE + MAX_RESPONSE_SIZE
    if not TRANSPORT_HEADER_SIZE + HEADER_SIZE <= len(data) <= limit:
        raise DecodeError(f"response of {len(data)} bytes outside 20..{limit}")
    (size,) = _U32.unpack_from(data, 0)
    if size != len(data) - TRANSPORT_HEADER_SIZE:
        raise DecodeError(f"transport Size {size} but {len(data) - 4} bytes follow", 0)
    msg = _parse(memoryview(data), TRANSPORT_HEADER_SIZE, requests=False)
    assert isinstance(msg, NegoResp | BlkList | Blk | SegList)
    return msg


def _parse(data: memoryview, base: int, *, requests: bool) -> Message:
    head = parse_header(data, base)
    if head.msg_type <= MsgType.SEGLIST and (head.msg_type in REQUEST_TYPES) != requests:
        kind = "request" if requests else "response"
        raise DecodeError(f"{MsgType(head.msg_type).name} is not a {kind}", base + 4)
    r = _Reader(data, base, base + HEADER_SIZE)
    v, c = head.version, head.crypto
    msg: Message
    match head.msg_type:
        case MsgType.NEGO_REQ | MsgType.NEGO_RESP:
            lo, hi = ProtocolVersion.from_wire(r.u32()), ProtocolVersion.from_wire(r.u32())
            cls = NegoReq if head.msg_type == MsgType.NEGO_REQ else NegoResp
            msg = cls(lo, hi, crypto=c, version=v)
        case MsgType.GETBLKLIST:
            msg = GetBlkList(r.sized(), r.ranges(MAX_BLOCK_RANGES), crypto=c, version=v)
        case MsgType.GETBLKS:
            seg, ranges = r.sized(), r.ranges(MAX_BLOCK_RANGES)
            msg = GetBlks(seg, ranges, r.sized(), crypto=c, version=v)
        case MsgType.BLKLIST:
            seg, ranges = r.sized(), r.ranges(None)
            msg = BlkList(seg, ranges, r.u32(), crypto=c, version=v)
        case MsgType.BLK:
            seg, index, next_index = r.sized(), r.u32(), r.u32()
            block, vrf, iv = r.sized(), r.sized(), r.sized()
            msg = Blk(seg, index, next_index, block, vrf, iv, crypto=c, version=v)
        case MsgType.GETSEGLIST:
            request_id, count = r.raw(REQUEST_ID_SIZE), r.u32()
            if count * 4 > r.end - r.pos:  # every id costs at least its 4-byte size
                raise DecodeError(f"{count} segment ids overrun the message", r.pos - 4)
            ids = tuple(r.sized() for _ in range(count))
            msg = GetSegList(request_id, ids, r.sized(), crypto=c, version=v)
        case MsgType.SEGLIST:
            request_id, ranges = r.raw(REQUEST_ID_SIZE), r.ranges(None)
            msg = SegList(request_id, ranges, r.sized(), crypto=c, version=v)
        case other:
            raise DecodeError(f"unknown MsgType {other}", base + 4)
    r.finish()
    return msg


def serialize(msg: Message) -> bytes:
    """One message as sent in a request body (no transport header)."""
    match msg:
        case NegoReq() | NegoResp():
            body = _U32X2.pack(msg.min_version.to_wire(), msg.max_version.to_wire())
        case GetBlkList():
            body = _sized(msg.segment_id) + _ranges(msg.ranges)
        case GetBlks():
            body = _sized(msg.segment_id) + _ranges(msg.ranges) + _sized(msg.vrf)
        case BlkList():
            body = _sized(msg.segment_id) + _ranges(msg.ranges) + _U32.pack(msg.next_block_index)
        case Blk():
            indexes = _U32X2.pack(msg.block_index, msg.next_block_index)
            parts = (_sized(msg.segment_id), indexes, _sized(msg.block), _sized(msg.vrf))
            body = b"".join((*parts, _sized(msg.iv)))
        case GetSegList():
            ids = (_sized(segment_id) for segment_id in msg.segment_ids)
            count = _U32.pack(len(msg.segment_ids))
            body = b"".join((msg.request_id, count, *ids, _sized(msg.blob)))
        case SegList():
            body = msg.request_id + _ranges(msg.ranges) + _sized(msg.blob)
    header = _HEADER.pack(msg.version.to_wire(), msg.MSG_TYPE, HEADER_SIZE + len(body), msg.crypto)
    return header + body


def serialize_response(msg: Response) -> bytes:
    """A response body: 4-byte TRANSPORT_RESPONSE_HEADER plus the message (2.1)."""
    body = serialize(msg)
    return _U32.pack(len(body)) + body


def _sized(value: bytes) -> bytes:
    # Every field before a variable one is 4-aligned, so padding the value aligns the message.
    return _U32.pack(len(value)) + value + bytes(-len(value) % 4)


def _ranges(ranges: tuple[BlockRange, ...]) -> bytes:
    return _U32.pack(len(ranges)) + b"".join(_U32X2.pack(r.index, r.count) for r in ranges)


@dataclass(frozen=True, slots=True)
class SegmentAge:
    """ENCODED_SEGMENT_AGE (2.2.1.5): a 24-bit age of the segment at a relative index."""

    index: int
    age: int


@dataclass(frozen=True, slots=True)
class ExtensibleBlob:
    """Extensible blob version 1 (2.2.6.1); units 3 (hundredths of a second) is the default."""

    units: int = 3
    ages: tuple[SegmentAge, ...] = ()
    version: int = 1


def parse_extensible_blob(data: bytes) -> ExtensibleBlob:
    if len(data) < _BLOB_HEAD.size:
        raise DecodeError("extensible blob shorter than its 4-byte head", 0)
    version, units, count = _BLOB_HEAD.unpack_from(data, 0)
    if version != 1:
        raise DecodeError(f"extensible blob version {version} is not 1", 0)
    if not 1 <= units <= 4:
        raise DecodeError(f"SegmentAgeUnits {units} outside 1..4", 2)
    if len(data) != 4 + 4 * count:
        raise DecodeError(f"{count} segment ages need {4 + 4 * count} bytes", 3)
    ages = tuple(
        SegmentAge(i, lo | mid << 8 | hi << 16)
        for i, lo, mid, hi in _AGE.iter_unpack(memoryview(data)[4:])
    )
    return ExtensibleBlob(units, ages, version)


def serialize_extensible_blob(blob: ExtensibleBlob) -> bytes:
    out = bytearray(_BLOB_HEAD.pack(blob.version, blob.units, len(blob.ages)))
    for a in blob.ages:
        out += _AGE.pack(a.index, a.age & 0xFF, (a.age >> 8) & 0xFF, a.age >> 16)
    return bytes(out)
