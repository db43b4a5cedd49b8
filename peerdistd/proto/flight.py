"""Single-flight claims between peerdistd nodes: the datagram codec, sans-IO.

peerdistd nodes of one branch agree who fetches which piece of a content from the origin
(docs/single-flight.md). The messages travel on a multicast group of their own; Windows and
iPXE never see them, and PCCRD/PCCRR are unchanged. Layout (network byte order)::

    magic "PDsf" | version u8 = 1 | kind u8 | ttl_ms u16 | node id 16 bytes
    | endpoint length u8 | endpoint (ASCII "ip:port" / "[v6]:port", the PCCRR address)
    | piece count u8 | pieces: id length u8 | segment id | first block u32 | held u16

Only :class:`DecodeError` escapes :func:`parse`; a datagram is capped at
:data:`MAX_DATAGRAM` bytes before parsing.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrc_segment import Segment

MAGIC: Final = b"PDsf"
VERSION: Final = 1
GROUP_V4: Final = "239.192.152.143"  # organization-local scope (RFC 2365 6.2), like PCCRD's
GROUP_V6: Final = "ff02::1:5066"  # link-local scope: a branch is one link
PORT: Final = 3703  # beside PCCRD's 3702
MAX_DATAGRAM: Final = 1400  # one Ethernet frame: no fragment can be lost
MAX_PIECES: Final = 16  # per datagram (renewals are batched)
MAX_ENDPOINT: Final = 64
# SHA-256/384/512 HoD-derived segment ids ([MS-PCCRC] 2.3)
SEGMENT_ID_SIZES: Final = frozenset({32, 48, 64})
NODE_ID_SIZE: Final = 16

_HEAD = struct.Struct("!4sBBH16s")
_PIECE_TAIL = struct.Struct("!IH")


class Kind(IntEnum):
    """What a message says of its pieces."""

    CLAIM = 1  # "I mean to fetch these" (tentative, for the contention window)
    HOLD = 2  # "I am fetching these; ``held`` blocks are in" (settled claim, renewal)
    DONE = 3  # "I hold these whole": fetch them from my endpoint
    RELEASE = 4  # "I gave these up": take them over now


@dataclass(frozen=True, slots=True, order=True)
class PieceId:
    """A piece: its first segment id and first block index (the same for whole and range
    content information of one content)."""

    segment_id: bytes
    first_block: int


@dataclass(frozen=True, slots=True)
class PieceState:
    piece: PieceId
    held: int = 0  # blocks of the piece the sender holds


@dataclass(frozen=True, slots=True)
class Message:
    kind: Kind
    node: bytes  # 16 bytes; the lower id wins a tie
    endpoint: str  # where the sender serves PCCRR
    ttl_ms: int  # the claim lives this long after the message without another
    pieces: tuple[PieceState, ...]

    def __bytes__(self) -> bytes:
        return serialize(self)


def serialize(msg: Message) -> bytes:
    """The datagram of ``msg``; ValueError if a field is out of range (our bug, not input)."""
    if len(msg.node) != NODE_ID_SIZE:
        raise ValueError("node id must be 16 bytes")
    endpoint = msg.endpoint.encode("ascii")
    if not 0 < len(endpoint) <= MAX_ENDPOINT:
        raise ValueError("endpoint length out of range")
    if not 0 < len(msg.pieces) <= MAX_PIECES:
        raise ValueError("piece count out of range")
    if not 0 <= msg.ttl_ms <= 0xFFFF:
        raise ValueError("ttl out of range")
    out = bytearray(_HEAD.pack(MAGIC, VERSION, msg.kind, msg.ttl_ms, msg.node))
    out += bytes([len(endpoint)]) + endpoint + bytes([len(msg.pieces)])
    for state in msg.pieces:
        sid = state.piece.segment_id
        if len(sid) not in SEGMENT_ID_SIZES:
            raise ValueError("segment id size")
        out += bytes([len(sid)]) + sid
        out += _PIECE_TAIL.pack(state.piece.first_block, min(state.held, 0xFFFF))
    if len(out) > MAX_DATAGRAM:
        raise ValueError("message too large")
    return bytes(out)


def parse(data: bytes | bytearray | memoryview) -> Message:
    """Decode one datagram; DecodeError (with the offset) for anything malformed."""
    data = bytes(data)
    if len(data) > MAX_DATAGRAM:
        raise DecodeError(f"datagram of {len(data)} bytes", 0)
    if len(data) < _HEAD.size:
        raise DecodeError("truncated header", len(data))
    magic, version, kind, ttl_ms, node = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError("not a single-flight message", 0)
    if version != VERSION:
        raise DecodeError(f"version {version}", 4)
    try:
        kind = Kind(kind)
    except ValueError:
        raise DecodeError(f"unknown kind {kind}", 5) from None
    pos = _HEAD.size
    endpoint, pos = _pull_sized(data, pos, "endpoint")
    if not 0 < len(endpoint) <= MAX_ENDPOINT or not _printable_ascii(endpoint):
        raise DecodeError("bad endpoint", pos - len(endpoint))
    count, pos = _pull_u8(data, pos, "piece count")
    if not 0 < count <= MAX_PIECES:
        raise DecodeError(f"piece count {count}", pos - 1)
    pieces = []
    for _ in range(count):
        sid, pos = _pull_sized(data, pos, "segment id")
        if len(sid) not in SEGMENT_ID_SIZES:
            raise DecodeError(f"segment id of {len(sid)} bytes", pos - len(sid))
        if len(data) < pos + _PIECE_TAIL.size:
            raise DecodeError("truncated piece", len(data))
        first, held = _PIECE_TAIL.unpack_from(data, pos)
        pos += _PIECE_TAIL.size
        pieces.append(PieceState(PieceId(sid, first), held))
    if pos != len(data):
        raise DecodeError("trailing bytes", pos)
    return Message(kind, node, endpoint.decode("ascii"), ttl_ms, tuple(pieces))


def _pull_u8(data: bytes, pos: int, what: str) -> tuple[int, int]:
    if pos >= len(data):
        raise DecodeError(f"truncated {what}", len(data))
    return data[pos], pos + 1


def _pull_sized(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    size, pos = _pull_u8(data, pos, what)
    if len(data) < pos + size:
        raise DecodeError(f"truncated {what}", len(data))
    return data[pos : pos + size], pos + size


def _printable_ascii(raw: bytes) -> bool:
    return all(0x21 <= b < 0x7F for b in raw)


def piece_starts(version: int, segments: Sequence[Segment], cap: int) -> list[int]:
    """Where the pieces of ``segments`` start (content offsets, ascending): every node and
    every application computes the same cut (docs/single-flight.md, "Pieces").

    V1: ``cap // block size`` blocks of one segment, counted from its first block. V2 (one
    block per segment): the segments whose start lies in one ``cap``-sized stretch of the
    content form a piece, so a piece starts at the first segment starting in each stretch.
    """
    starts: list[int] = []
    last_bucket = -1
    for seg in segments:
        if version == 1:
            per = max(1, cap // seg.block_size)
            starts += [seg.block_span(i)[0] for i in range(0, seg.block_count, per)]
        elif seg.offset // cap != last_bucket:
            last_bucket = seg.offset // cap
            starts.append(seg.offset)
    return starts
