"""The PCHC offer exchange, both sides sans-IO ([MS-PCHC] 3.1.5, 3.2.5; PROTOCOLS.md 4)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

import pytest

from peerdistd.proto import pchc, pchc_client, pchc_server
from peerdistd.proto.pccrc import HashAlgorithm, segment_v1, segment_v2
from peerdistd.proto.pchc import InitialOffer, ResponseCode, SegmentDescriptor
from peerdistd.proto.pchc_client import Step, V1Offer
from peerdistd.proto.pchc_server import OpaquePull, Verdict, VerifiedPull

KS = hashlib.sha256(b"k").digest()
TAG = bytes(16)
DATA = random.Random(1).randbytes(3 * 65536 + 5)
HASHES = [hashlib.sha256(DATA[i : i + 65536]).digest() for i in range(0, len(DATA), 65536)]
SEGMENT = segment_v1(HashAlgorithm.SHA256, 0, 0, len(DATA), HASHES, KS)


class Held:
    def __init__(self, held: dict[bytes, list[int]] | None = None) -> None:
        self.held = held or {}

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return self.held.get(segment_id, [])


def test_v1_exchange_pulls_every_missing_block_then_nothing() -> None:
    offer = V1Offer(SEGMENT, HashAlgorithm.SHA256, 8282, TAG)
    held = Held()
    reply = pchc_server.respond(offer.start(), 1, held)
    assert reply.body == pchc.serialize_response(ResponseCode.INTERESTED) and not reply.pulls
    step = offer.answer(reply.body)
    assert step.step is Step.SEND
    reply = pchc_server.respond(step.body, 1, held)
    assert reply.verdict is Verdict.ANSWER
    assert reply.pulls == (VerifiedPull(8282, HashAlgorithm.SHA256, SEGMENT, (0, 1, 2, 3)),)
    assert offer.answer(reply.body).step is Step.DONE
    # The same offer again, now that blocks 0-3 are held: still INTERESTED, nothing to pull.
    held.held[SEGMENT.segment_id] = [0, 1, 2, 3]
    again = V1Offer(SEGMENT, HashAlgorithm.SHA256, 8282, TAG)
    reply = pchc_server.respond(again.start(), 1, held)
    assert pchc.parse_response(reply.body) is ResponseCode.INTERESTED
    reply = pchc_server.respond(again.answer(reply.body).body, 1, held)
    assert pchc.parse_response(reply.body) is ResponseCode.OK and reply.pulls == ()


def test_a_segment_info_that_does_not_verify_is_dropped() -> None:
    bad = segment_v1(HashAlgorithm.SHA256, 0, 0, len(DATA), HASHES, KS)
    wire = bytearray(
        pchc_client.V1Offer(bad, HashAlgorithm.SHA256, 1, TAG)
        .answer(pchc.serialize_response(ResponseCode.INTERESTED))
        .body
    )
    wire[-5] ^= 0xFF
    reply = pchc_server.respond(bytes(wire), 1, Held())
    assert reply.verdict is Verdict.DROP and "HoD" in reply.reason and reply.body == b""


@pytest.mark.parametrize(
    ("body", "version", "why"),
    [
        (b"junk", 1, "outside"),
        (pchc.serialize(InitialOffer(1, bytes(32))), 2, "v1.0 message on the v2 path"),
    ],
)
def test_malformed_or_misrouted_offers_are_dropped(body: bytes, version: int, why: str) -> None:
    reply = pchc_server.respond(body, version, Held())
    assert reply.verdict is Verdict.DROP and why in reply.reason


def test_batched_offers_pull_what_is_not_held() -> None:
    v2 = segment_v2(0, 0, DATA[:100_000], hashlib.sha512(b"k").digest()[:32])
    descriptors = [
        pchc_client.descriptor(SEGMENT, HashAlgorithm.SHA256, TAG),
        pchc_client.descriptor(v2, HashAlgorithm.TRUNCATED_SHA512, TAG),
    ]
    bodies = list(pchc_client.batched_offers(80, descriptors * 100))
    assert len(bodies) == 2  # 200 segments: 128 + 72
    held = Held({SEGMENT.segment_id: [0, 2]})
    reply = pchc_server.respond(bodies[0], 2, held)
    assert pchc_client.batch_accepted(reply.body)
    assert reply.pulls[:2] == (
        OpaquePull(80, SEGMENT.segment_id, (1, 3), 65536, len(DATA)),
        OpaquePull(80, v2.segment_id, (0,), 100_000, 100_000),
    )
    first, second = reply.pulls[:2]
    assert isinstance(first, OpaquePull) and isinstance(second, OpaquePull)
    assert second.plaintext_length(0) == 100_000
    assert first.plaintext_length(3) == 5


@pytest.mark.parametrize(
    "descriptor",
    [
        SegmentDescriptor(65536, 200_000, TAG, 4, bytes(32)),  # a V2 segment over 128 KiB
        SegmentDescriptor(4096, 8192, TAG, 1, bytes(32)),  # V1 blocks are 64 KiB
        SegmentDescriptor(65536, 513 * 65536, TAG, 1, bytes(32)),  # over 512 blocks
    ],
)
def test_impossible_descriptors_are_dropped(descriptor: SegmentDescriptor) -> None:
    body = pchc.serialize(pchc.BatchedOffer(80, (descriptor,)))
    assert pchc_server.respond(body, 2, Held()).verdict is Verdict.DROP
