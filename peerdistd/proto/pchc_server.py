"""Sans-IO MS-PCHC hosted-cache server: one offer in, the answer and what to pull out.

The driver (``net.hosted_cache``) passes the request body, the PCHC version its path named and
what is already held; it sends the answer (or closes the connection when told to drop) and
pulls what it is told to with PCCRR ([MS-PCHC] 3.2.5; PROTOCOLS.md 4).

Decisions, with the reason for each:
* Anything that does not parse, or comes on the other version's path: drop by closing the
  connection (3.2.5.1: malformed messages are discarded; there is no error code to send).
* INITIAL_OFFER: always INTERESTED, even when repeated or when the segment is held (what
  Windows answers and Microsoft's suite expects); SEGMENT_INFO then says what is missing.
* SEGMENT_INFO: dropped unless its block-hash list is complete and hashes to its HoD; else OK,
  and the missing blocks are pulled, each checked against its hash before it is kept.
* BATCHED_OFFER: OK; each segment not held is pulled. V2 offers carry no hashes and no key,
  so what is pulled can be neither decrypted nor verified here: it is kept as received and
  re-served as is, and readers verify after decrypting (docs/hosted-cache.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrc_hash import V1_BLOCK_SIZE, V2_MAX_SEGMENT_SIZE, HashAlgorithm
from peerdistd.proto.pccrc_segment import Segment
from peerdistd.proto.pchc import (
    BatchedOffer,
    InitialOffer,
    OfferHash,
    ResponseCode,
    SegmentDescriptor,
    SegmentInfo,
    parse_request,
    serialize_response,
)

MAX_V1_OFFERED_BLOCKS = 512  # [MS-PCCRR] 2.2.1.1: block indexes 0..511


class Holdings(Protocol):
    """What the hosted cache holds (met by the verified cache and the opaque store)."""

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        """Sorted indexes held for the segment, verified or not."""
        ...


class Verdict(Enum):
    ANSWER = "answer"
    DROP = "drop"  # close the connection, answer nothing


@dataclass(frozen=True, slots=True)
class VerifiedPull:
    """Blocks of a V1 segment to pull from the offerer, each checked against its hash."""

    port: int
    algorithm: HashAlgorithm
    segment: Segment
    blocks: tuple[int, ...]

    @property
    def segment_id(self) -> bytes:
        return self.segment.segment_id


@dataclass(frozen=True, slots=True)
class OpaquePull:
    """Blocks of a segment offered without hashes (BATCHED_OFFER): kept encrypted, unverified."""

    port: int
    segment_id: bytes
    blocks: tuple[int, ...]
    block_length: int  # the plaintext length of every block but maybe the last
    segment_size: int

    def plaintext_length(self, index: int) -> int:
        return min(self.block_length, self.segment_size - index * self.block_length)


Pull = VerifiedPull | OpaquePull


@dataclass(frozen=True, slots=True)
class OfferReply:
    verdict: Verdict
    body: bytes = b""
    pulls: tuple[Pull, ...] = ()
    reason: str = ""


def respond(body: bytes | bytearray | memoryview, version: int, holdings: Holdings) -> OfferReply:
    """Answer one PCHC request that arrived on the path of PCHC ``version``; never raises."""
    try:
        msg = parse_request(body)
    except DecodeError as exc:
        return OfferReply(Verdict.DROP, reason=str(exc))
    if version != msg.MAJOR:
        return OfferReply(Verdict.DROP, reason=f"a v{msg.MAJOR}.0 message on the v{version} path")
    match msg:
        case InitialOffer():
            return OfferReply(Verdict.ANSWER, serialize_response(ResponseCode.INTERESTED))
        case SegmentInfo():
            return _segment_info(msg, holdings)
        case BatchedOffer():
            return _batched(msg, holdings)


def _segment_info(msg: SegmentInfo, holdings: Holdings) -> OfferReply:
    if not msg.verified():
        return OfferReply(Verdict.DROP, reason="SEGMENT_INFO block hashes do not hash to HoD")
    segment = msg.segment
    held = set(holdings.held_blocks(segment.segment_id))
    missing = tuple(i for i in range(len(segment.block_hashes)) if i not in held)
    ok = serialize_response(ResponseCode.OK)
    if not missing:
        return OfferReply(Verdict.ANSWER, ok)  # a second offer moves no blocks
    return OfferReply(
        Verdict.ANSWER, ok, (VerifiedPull(msg.port, msg.algorithm, segment, missing),)
    )


def _batched(msg: BatchedOffer, holdings: Holdings) -> OfferReply:
    pulls: list[Pull] = []
    for d in msg.segments:
        shape = _shape(d)
        if shape is None:
            return OfferReply(Verdict.DROP, reason=f"an impossible segment descriptor {d}")
        block_length, count = shape
        held = set(holdings.held_blocks(d.segment_id))
        missing = tuple(i for i in range(count) if i not in held)
        if missing:
            pulls.append(OpaquePull(msg.port, d.segment_id, missing, block_length, d.segment_size))
    return OfferReply(Verdict.ANSWER, serialize_response(ResponseCode.OK), tuple(pulls))


def _shape(d: SegmentDescriptor) -> tuple[int, int] | None:
    """(block length, block count) of an offered segment, or None if it cannot exist."""
    if d.hash_algorithm == OfferHash.TRUNCATED_SHA512:
        # V2: one segment of at most 128 KiB is one "block", index 0 (PROTOCOLS.md 2.5).
        if d.segment_size > V2_MAX_SEGMENT_SIZE:
            return None
        return d.segment_size, 1
    if d.block_size != V1_BLOCK_SIZE:
        return None
    count = -(-d.segment_size // V1_BLOCK_SIZE)
    return (V1_BLOCK_SIZE, count) if count <= MAX_V1_OFFERED_BLOCKS else None
