"""MS-PCHC hosted-cache messages: sans-IO parse/serialize pairs (PROTOCOLS.md section 4).

A request is a POST body with no transport header: MESSAGE_HEADER (8 bytes: MinorVersion u8,
MajorVersion u8, MsgType u16, 4 padding bytes), CONNECTION_INFORMATION (8 bytes: the port of
the offerer's PCCRR server, u16, then 6 padding bytes), then the body ([MS-PCHC] 2.2.1). A
response is 5 bytes: a transport Size u32 (= 1) and the ResponseCode u8 (2.2.2).

The spec never states the byte order of PCHC's own integers; Microsoft's conformance suite
writes them big-endian and Windows reads them so (PROTOCOLS.md 4: port 8282 is ``20 5A``). The
content information inside SEGMENT_INFO stays little-endian, as MS-PCCRC V1 is. Sizes are
capped before anything is parsed; only :class:`DecodeError` escapes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final, TypeAlias

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrc_hash import V1_BLOCK_SIZE, V1_SEGMENT_SIZE, HashAlgorithm, segment_id
from peerdistd.proto.pccrc_segment import Segment

# [MS-PCHC] 2.1: v1.0 over HTTPS on 443, v2.0 over HTTP on the PCCRR port (80), by path.
PATH_V1: Final = "/C574AC30-5794-4AEE-B1BB-6651C5315029"
PATH_V2: Final = "/0131501b-d67f-491b-9a40-c4bf27bcb4d4"
HEADER_SIZE: Final = 16  # MESSAGE_HEADER + CONNECTION_INFORMATION
CONTENT_TAG_SIZE: Final = 16  # 2.2.1.4 / 2.2.1.5
MAX_BATCH: Final = 128  # 2.2.1.5: at most 128 segment descriptors per BATCHED_OFFER
SEGMENT_ID_SIZE: Final = 32  # Windows only supports 32-byte ids ([MS-PCCRR] Appendix A <3>)
# A SEGMENT_INFO is 16 + 16 + 18 + 16 + 2*64 + 4 + 512*64 bytes at most (SHA-512 block hashes);
# the whole request cap leaves room and nothing bigger is read.
MAX_REQUEST_SIZE: Final = 64 * 1024
RESPONSE_SIZE: Final = 5

_HEAD = struct.Struct(">BBHIH6x")  # minor, major, type, padding, port, padding
_RESPONSE = struct.Struct(">IB")
_DESCRIPTOR = struct.Struct(">IIH")  # BlockSize, SegmentSize, SizeOfContentTag (2.2.1.5)
_DESCRIPTOR_SIZE: Final = _DESCRIPTOR.size + CONTENT_TAG_SIZE + 1 + SEGMENT_ID_SIZE  # 59
_CI_HEAD = struct.Struct("<HIIII")  # MS-PCCRC 2.3: Version, dwHashAlgo, offsets, cSegments
_CI_SEGMENT = struct.Struct("<QII")  # ullOffsetInContent, cbSegment, cbBlockSize (2.3.1.1)
_CI_COUNT = struct.Struct("<I")
_CI_VERSION: Final = 0x0100


class MsgType(IntEnum):
    """MESSAGE_HEADER.Type ([MS-PCHC] 2.2.1.1)."""

    INITIAL_OFFER = 1
    SEGMENT_INFO = 2
    BATCHED_OFFER = 3


class ResponseCode(IntEnum):
    """RESPONSE_MESSAGE.ResponseCode ([MS-PCHC] 2.2.2)."""

    OK = 0
    INTERESTED = 1  # v1.0 INITIAL_OFFER only: send SEGMENT_INFO


class OfferHash(IntEnum):
    """SEGMENT_DESCRIPTOR.HashAlgorithm of a BATCHED_OFFER (2.2.1.5)."""

    SHA256 = 0x01  # V1 content (64 KiB blocks)
    TRUNCATED_SHA512 = 0x04  # V2 content (one segment, one "block")


_V1_ALGORITHMS: Final = {a.value: a for a in HashAlgorithm if a.version == 1}


@dataclass(frozen=True, slots=True)
class InitialOffer:
    """INITIAL_OFFER_MESSAGE (2.2.1.3): a segment id on offer from ``port``."""

    port: int
    segment_id: bytes
    MSG_TYPE: ClassVar[MsgType] = MsgType.INITIAL_OFFER
    MAJOR: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """SEGMENT_INFO_MESSAGE (2.2.1.4): a V1 content information of one whole segment.

    ``offset_in_segment`` and ``read_bytes`` are the header's range fields, kept as sent (a
    hosted cache takes the whole segment whatever they say; PROTOCOLS.md 4 accepts 0).
    """

    port: int
    content_tag: bytes
    algorithm: HashAlgorithm
    segment: Segment
    offset_in_segment: int = 0
    read_bytes: int = 0
    MSG_TYPE: ClassVar[MsgType] = MsgType.SEGMENT_INFO
    MAJOR: ClassVar[int] = 1

    def verified(self) -> bool:
        """The block-hash list is complete and hashes to HoD ([MS-PCCRC] 2.2, 4.1.3)."""
        s = self.segment
        full = -(-s.length // V1_BLOCK_SIZE)
        return (
            len(s.block_hashes) == full and self.algorithm.digest(b"".join(s.block_hashes)) == s.hod
        )


@dataclass(frozen=True, slots=True)
class SegmentDescriptor:
    """One SEGMENT_DESCRIPTOR of a BATCHED_OFFER (2.2.1.5), 59 bytes on the wire."""

    block_size: int
    segment_size: int
    content_tag: bytes
    hash_algorithm: int
    segment_id: bytes


@dataclass(frozen=True, slots=True)
class BatchedOffer:
    """BATCHED_OFFER_MESSAGE (2.2.1.5): up to 128 segments on offer from ``port``."""

    port: int
    segments: tuple[SegmentDescriptor, ...]
    MSG_TYPE: ClassVar[MsgType] = MsgType.BATCHED_OFFER
    MAJOR: ClassVar[int] = 2


Request: TypeAlias = InitialOffer | SegmentInfo | BatchedOffer


def parse_request(data: bytes | bytearray | memoryview) -> Request:
    """One PCHC request body; DecodeError for anything malformed (the caller drops it)."""
    if not HEADER_SIZE <= len(data) <= MAX_REQUEST_SIZE:
        raise DecodeError(f"request of {len(data)} bytes outside {HEADER_SIZE}..{MAX_REQUEST_SIZE}")
    view = memoryview(data)
    minor, major, msg_type, _, port = _HEAD.unpack_from(view, 0)
    if minor != 0:
        raise DecodeError(f"MinorVersion {minor} is not 0", 0)
    body = view[HEADER_SIZE:]
    match msg_type:
        case MsgType.INITIAL_OFFER:
            _major(major, 1)
            if len(body) != SEGMENT_ID_SIZE:
                raise DecodeError(f"a segment id of {len(body)} bytes, not 32", HEADER_SIZE)
            return InitialOffer(port, bytes(body))
        case MsgType.SEGMENT_INFO:
            _major(major, 1)
            return _parse_segment_info(port, body)
        case MsgType.BATCHED_OFFER:
            _major(major, 2)
            return BatchedOffer(port, _parse_descriptors(body))
        case other:
            raise DecodeError(f"unknown PCHC message type {other}", 2)


def _major(major: int, expected: int) -> None:
    if major != expected:
        raise DecodeError(f"MajorVersion {major} for a v{expected}.0 message", 1)


def _parse_descriptors(body: memoryview) -> tuple[SegmentDescriptor, ...]:
    count, rest = divmod(len(body), _DESCRIPTOR_SIZE)
    if rest or not 1 <= count <= MAX_BATCH:
        raise DecodeError(f"{len(body)} bytes are not 1..{MAX_BATCH} segment descriptors", 16)
    out = []
    for i in range(count):
        pos = i * _DESCRIPTOR_SIZE
        block_size, segment_size, tag_size = _DESCRIPTOR.unpack_from(body, pos)
        where = HEADER_SIZE + pos
        if tag_size != CONTENT_TAG_SIZE:
            raise DecodeError(f"SizeOfContentTag {tag_size} is not 16", where + 8)
        pos += _DESCRIPTOR.size
        tag = bytes(body[pos : pos + CONTENT_TAG_SIZE])
        algo = body[pos + CONTENT_TAG_SIZE]
        if algo not in tuple(OfferHash):
            raise DecodeError(f"unknown segment HashAlgorithm {algo:#x}", where + 26)
        seg = bytes(body[pos + CONTENT_TAG_SIZE + 1 : pos + CONTENT_TAG_SIZE + 1 + 32])
        if segment_size == 0 or block_size == 0:
            raise DecodeError("a segment or block size of 0", where)
        out.append(SegmentDescriptor(block_size, segment_size, tag, algo, seg))
    return tuple(out)


def _parse_segment_info(port: int, body: memoryview) -> SegmentInfo:
    if len(body) < CONTENT_TAG_SIZE + _CI_HEAD.size:
        raise DecodeError("SEGMENT_INFO shorter than its content tag and header", HEADER_SIZE)
    tag = bytes(body[:CONTENT_TAG_SIZE])
    ci = body[CONTENT_TAG_SIZE:]
    base = HEADER_SIZE + CONTENT_TAG_SIZE
    version, algo_id, first_offset, read_bytes, count = _CI_HEAD.unpack_from(ci, 0)
    if version != _CI_VERSION:
        raise DecodeError(f"content information version {version:#06x} is not 1.0", base)
    algorithm = _V1_ALGORITHMS.get(algo_id)
    if algorithm is None:
        raise DecodeError(f"unknown V1 hash algorithm {algo_id:#x}", base + 2)
    if count != 1:
        raise DecodeError(f"cSegments {count} is not 1", base + 14)
    digest = algorithm.digest_size
    pos = _CI_HEAD.size
    if len(ci) < pos + _CI_SEGMENT.size + 2 * digest + _CI_COUNT.size:
        raise DecodeError("truncated segment description", base + pos)
    offset, length, block_size = _CI_SEGMENT.unpack_from(ci, pos)
    if block_size != V1_BLOCK_SIZE:
        raise DecodeError(f"cbBlockSize {block_size} is not {V1_BLOCK_SIZE}", base + pos + 12)
    if not 0 < length <= V1_SEGMENT_SIZE or offset % V1_SEGMENT_SIZE:
        raise DecodeError(f"a segment of {length} bytes at {offset}", base + pos)
    if first_offset >= length or read_bytes > length:
        raise DecodeError("range fields outside the segment", base + 6)
    pos += _CI_SEGMENT.size
    hod, kp = bytes(ci[pos : pos + digest]), bytes(ci[pos + digest : pos + 2 * digest])
    pos += 2 * digest
    (n_blocks,) = _CI_COUNT.unpack_from(ci, pos)
    pos += _CI_COUNT.size
    # The list must be the segment's whole one: the hosted cache checks it against HoD.
    if n_blocks != -(-length // V1_BLOCK_SIZE):
        raise DecodeError(f"cBlocks {n_blocks} for a segment of {length} bytes", base + pos - 4)
    if len(ci) != pos + n_blocks * digest:
        raise DecodeError(f"{len(ci) - pos} bytes for {n_blocks} block hashes", base + pos)
    hashes = tuple(bytes(ci[pos + k * digest : pos + (k + 1) * digest]) for k in range(n_blocks))
    segment = Segment(
        index=offset // V1_SEGMENT_SIZE,
        offset=offset,
        length=length,
        block_size=V1_BLOCK_SIZE,
        hod=hod,
        secret=kp,
        segment_id=segment_id(algorithm, kp, hod),
        block_hashes=hashes,
    )
    return SegmentInfo(port, tag, algorithm, segment, first_offset, read_bytes)


def serialize(msg: Request) -> bytes:
    """One request body, as POSTed to the hosted cache."""
    match msg:
        case InitialOffer():
            body = msg.segment_id
        case SegmentInfo():
            s = msg.segment
            parts = [
                msg.content_tag,
                _CI_HEAD.pack(
                    _CI_VERSION, msg.algorithm.value, msg.offset_in_segment, msg.read_bytes, 1
                ),
                _CI_SEGMENT.pack(s.offset, s.length, s.block_size),
                s.hod,
                s.secret,
                _CI_COUNT.pack(len(s.block_hashes)),
                *s.block_hashes,
            ]
            body = b"".join(parts)
        case BatchedOffer():
            body = b"".join(
                _DESCRIPTOR.pack(d.block_size, d.segment_size, len(d.content_tag))
                + d.content_tag
                + bytes([d.hash_algorithm])
                + d.segment_id
                for d in msg.segments
            )
    return _HEAD.pack(0, msg.MAJOR, msg.MSG_TYPE, 0, msg.port) + body


def segment_info_for(segment: Segment, algorithm: HashAlgorithm, port: int, tag: bytes) -> bytes:
    """The SEGMENT_INFO a client sends for a whole segment it holds (PROTOCOLS.md 4)."""
    # dwReadBytesInLastSegment = the segment's total bytes, offset 0: the whole segment.
    return serialize(SegmentInfo(port, tag, algorithm, segment, 0, segment.length))


def parse_response(data: bytes | bytearray | memoryview) -> ResponseCode:
    """The 5-byte response (2.2.2); DecodeError for anything else."""
    if len(data) != RESPONSE_SIZE:
        raise DecodeError(f"a response of {len(data)} bytes, not 5")
    size, code = _RESPONSE.unpack_from(data, 0)
    if size != 1:
        raise DecodeError(f"transport Size {size} is not 1", 0)
    if code not in tuple(ResponseCode):
        raise DecodeError(f"unknown ResponseCode {code}", 4)
    return ResponseCode(code)


def serialize_response(code: ResponseCode) -> bytes:
    return _RESPONSE.pack(1, code)


def route(path: str) -> int | None:
    """The PCHC version a request path names (case-insensitive, trailing slash optional)."""
    key = path.rstrip("/").lower()
    return {PATH_V1.lower(): 1, PATH_V2.lower(): 2}.get(key)
