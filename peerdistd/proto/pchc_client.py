"""Sans-IO MS-PCHC client: what a node sends to offer the segments it completed.

V1 ([MS-PCHC] 3.1.5): INITIAL_OFFER; if the answer is INTERESTED, SEGMENT_INFO with the
segment's content information; the hosted cache then pulls the blocks with PCCRR. V2: one
BATCHED_OFFER per at most 128 segments, answered OK. The driver moves the bytes; this module
says what comes next.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from peerdistd.errors import DecodeError, InvalidParameter
from peerdistd.proto.pccrc_hash import HashAlgorithm
from peerdistd.proto.pccrc_segment import Segment
from peerdistd.proto.pchc import (
    MAX_BATCH,
    BatchedOffer,
    InitialOffer,
    OfferHash,
    ResponseCode,
    SegmentDescriptor,
    parse_response,
    segment_info_for,
    serialize,
)


class Step(Enum):
    SEND = "send"  # POST ``OfferStep.body`` next
    DONE = "done"  # the offer is complete (the hosted cache will pull, or needs nothing)


@dataclass(frozen=True, slots=True)
class OfferStep:
    step: Step
    body: bytes = b""


class V1Offer:
    """One segment offered over PCHC v1.0: INITIAL_OFFER, then SEGMENT_INFO if INTERESTED."""

    def __init__(
        self, segment: Segment, algorithm: HashAlgorithm, port: int, content_tag: bytes
    ) -> None:
        if algorithm.version != 1:
            raise InvalidParameter("PCHC v1.0 offers V1 segments only")
        self._segment, self._algorithm = segment, algorithm
        self._port, self._tag = port, content_tag
        self._sent_info = False

    def start(self) -> bytes:
        return serialize(InitialOffer(self._port, self._segment.segment_id))

    def answer(self, body: bytes | bytearray) -> OfferStep:
        """The next step after a response body; DecodeError for a malformed one."""
        code = parse_response(body)
        if code is ResponseCode.INTERESTED and not self._sent_info:
            self._sent_info = True
            info = segment_info_for(self._segment, self._algorithm, self._port, self._tag)
            return OfferStep(Step.SEND, info)
        if code is ResponseCode.INTERESTED:
            raise DecodeError("INTERESTED in answer to SEGMENT_INFO", 4)
        return OfferStep(Step.DONE)


def descriptor(segment: Segment, algorithm: HashAlgorithm, content_tag: bytes) -> SegmentDescriptor:
    """The BATCHED_OFFER descriptor of a segment (2.2.1.5)."""
    hash_id = OfferHash.SHA256 if algorithm.version == 1 else OfferHash.TRUNCATED_SHA512
    return SegmentDescriptor(
        segment.block_size, segment.length, content_tag, hash_id, segment.segment_id
    )


def batched_offers(port: int, descriptors: Iterable[SegmentDescriptor]) -> Iterator[bytes]:
    """BATCHED_OFFER bodies of at most 128 segments each."""
    batch: list[SegmentDescriptor] = []
    for d in descriptors:
        batch.append(d)
        if len(batch) == MAX_BATCH:
            yield serialize(BatchedOffer(port, tuple(batch)))
            batch = []
    if batch:
        yield serialize(BatchedOffer(port, tuple(batch)))


def batch_accepted(body: bytes | bytearray) -> bool:
    """Whether a BATCHED_OFFER was answered OK (INTERESTED is not an answer to it)."""
    return parse_response(body) is ResponseCode.OK
