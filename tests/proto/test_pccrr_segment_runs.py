"""Runs across segments on the RUN_PATH extension, sans-IO (proto.pccrr, issue 9).

A V2 segment is one block, so a run within a segment would be one block. The body posted to
RUN_PATH may hold several GETBLKS back to back (each a standard message, one range of one
segment); the answer is one MSG_BLK per block asked for, in order, each encrypted with its
own segment's key, at most RUN_LIMIT of them and RUN_BYTES of block data.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.proto import pccrr, pccrr_client
from peerdistd.proto.pccrr import RUN_BYTES, RUN_LIMIT, Blk, BlockRange, GetBlks, NegoReq
from peerdistd.proto.pccrr_client import Outcome, UnexpectedAnswer
from peerdistd.proto.pccrr_server import ReplyKind, RetrievalResponder

# Two GETBLKS back to back: segment AA.. block 0, then segment BB.. blocks 0-1. Each is the
# standard 68-byte message ([MS-PCCRR] 2.2.4.3: ProtVer 1.0, MsgType 3, MsgSize, AES_128;
# SegmentID; one range; an empty VRF block).
VECTOR = bytes.fromhex(
    "00000001" "00000003" "00000044" "00000001"  # header: v1.0, GETBLKS, 68 bytes, AES_128
    "00000020" + "aa" * 32 +  # SegmentID
    "00000001" "00000000" "00000001"  # one range: index 0, count 1
    "00000000"  # SizeOfDataForVrfBlock 0
    "00000001" "00000003" "00000044" "00000001"
    "00000020" + "bb" * 32 +
    "00000001" "00000000" "00000002"
    "00000000"
)  # fmt: skip
VECTOR_MESSAGES = (
    GetBlks(b"\xaa" * 32, (BlockRange(0, 1),)),
    GetBlks(b"\xbb" * 32, (BlockRange(0, 2),)),
)

# V2-like segments: one block each, up to 128 KiB, each with its own key.
SEGS = {bytes([n]) * 32: (bytes([n + 100]) * 32, os.urandom(100_000 + n * 1000)) for n in range(20)}
IDS = list(SEGS)


class Segments:
    """Holds every segment of SEGS as block 0, except those in ``missing``."""

    def __init__(self, missing: Sequence[bytes] = ()) -> None:
        self.missing = set(missing)

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        got = SEGS.get(segment_id)
        return None if got is None or segment_id in self.missing else got[0]

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return [0] if self.segment_secret(segment_id) is not None else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        ok = index == 0 and self.segment_secret(segment_id) is not None
        return SEGS[segment_id][1] if ok else None


def answer(responder: RetrievalResponder, ids: Sequence[bytes], busy: bool = False) -> bytes:
    reply = responder.respond_run(pccrr_client.run_request([(s, 0) for s in ids]), busy=busy)
    assert reply.kind is not ReplyKind.DROP, reply.reason
    return bytes(reply.body)


def opened(blk: Blk | Outcome, segment_id: bytes) -> bytes:
    assert isinstance(blk, Blk)
    secret, data = SEGS[segment_id]
    (plain,) = pccrr_client.decrypt_block(blk, secret, len(data))
    return plain


def test_the_vector() -> None:
    assert pccrr.serialize_run_request(VECTOR_MESSAGES) == VECTOR
    assert pccrr.parse_run_request(VECTOR) == VECTOR_MESSAGES
    blocks = [(b"\xaa" * 32, 0), (b"\xbb" * 32, 0), (b"\xbb" * 32, 1)]
    assert pccrr_client.run_request(blocks) == VECTOR


def test_one_segment_is_the_one_message_of_a_v1_run() -> None:
    sid = b"\xcc" * 32
    assert pccrr_client.run_request([(sid, 4), (sid, 5), (sid, 6)]) == (
        pccrr_client.block_run_request(sid, 4, 3)
    )


def test_fed_a_byte_at_a_time_only_whole_messages_parse() -> None:
    """No prefix is taken for more than the whole messages it holds."""
    first = len(pccrr.serialize(VECTOR_MESSAGES[0]))
    for cut in range(len(VECTOR)):
        if cut == first:
            assert pccrr.parse_run_request(VECTOR[:cut]) == VECTOR_MESSAGES[:1]
            continue
        with pytest.raises(DecodeError):
            pccrr.parse_run_request(VECTOR[:cut])


segment_ids = st.sampled_from([32, 48, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n))
getblks = st.builds(
    lambda sid, index, count, crypto: GetBlks(sid, (BlockRange(index, count),), crypto=crypto),
    segment_ids,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 3),
)


@given(st.lists(getblks, min_size=1, max_size=40))
def test_round_trip(messages: list[GetBlks]) -> None:
    assert pccrr.parse_run_request(pccrr.serialize_run_request(messages)) == tuple(messages)


@given(st.binary(max_size=400))
def test_only_decode_error_escapes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        pccrr.parse_run_request(data)


@given(st.lists(getblks, min_size=2, max_size=6), st.integers(0, 400), st.binary(min_size=1))
def test_damaged_bodies_only_raise_decode_error_or_parse(
    messages: list[GetBlks], at: int, junk: bytes
) -> None:
    raw = bytearray(pccrr.serialize_run_request(messages))
    at %= len(raw)
    raw[at : at + len(junk)] = junk
    with contextlib.suppress(DecodeError):
        pccrr.parse_run_request(bytes(raw))


def test_consecutive_segments_come_in_one_answer_each_under_its_own_key() -> None:
    ids = IDS[:8]
    body = answer(RetrievalResponder(Segments()), ids)
    got = pccrr_client.split_runs(body, [(s, 0) for s in ids], busy=False)
    assert [opened(blk, sid) for blk, sid in zip(got, ids, strict=True)] == [
        SEGS[s][1] for s in ids
    ]
    # Each segment's key opens its own block only.
    assert isinstance(got[1], Blk)
    secret0, data1 = SEGS[ids[0]][0], SEGS[ids[1]][1]
    try:
        (plain,) = pccrr_client.decrypt_block(got[1], secret0, len(data1))
    except UnexpectedAnswer:  # bad padding under the wrong key
        plain = b""
    assert plain != data1


def test_the_answer_stops_at_run_bytes() -> None:
    body = answer(RetrievalResponder(Segments()), IDS[:16])
    got = pccrr_client.split_runs(body, [(s, 0) for s in IDS[:16]], busy=False)
    sizes = [len(SEGS[s][1]) for s in IDS]
    fit = max(n for n in range(1, 17) if sum(sizes[:n]) <= RUN_BYTES)
    assert len(got) == fit < 16
    assert len(got) <= RUN_LIMIT


def test_a_segment_not_held_is_an_empty_answer_in_place() -> None:
    ids = IDS[:4]
    body = answer(RetrievalResponder(Segments(missing=[ids[1]])), ids)
    got = pccrr_client.split_runs(body, [(s, 0) for s in ids], busy=False)
    assert got[1] is Outcome.MISSING
    assert opened(got[2], ids[2]) == SEGS[ids[2]][1]


def test_a_long_body_costs_the_server_one_answer_of_lookups() -> None:
    # A peer may post a RUN_PATH body of ~1,000 GETBLKS (64 KiB); the answer holds RUN_LIMIT
    # blocks, and the server looked up the secret of every segment named after those.
    class Counting(Segments):
        lookups = 0

        def segment_secret(self, segment_id: bytes) -> bytes | None:
            Counting.lookups += 1
            return super().segment_secret(segment_id)

    unknown = [n.to_bytes(32, "big") for n in range(1, 1001)]
    body = answer(RetrievalResponder(Counting()), unknown)
    got = pccrr_client.split_runs(body, [(s, 0) for s in unknown[:RUN_LIMIT]], busy=False)
    assert got == [Outcome.MISSING] * RUN_LIMIT
    assert Counting.lookups <= 2 * RUN_LIMIT


def test_busy_gets_the_one_empty_answer() -> None:
    body = answer(RetrievalResponder(Segments()), IDS[:4], busy=True)
    assert pccrr_client.split_runs(body, [(s, 0) for s in IDS[:4]], busy=True) == [Outcome.BUSY]


def test_a_run_of_other_messages_is_dropped() -> None:
    responder = RetrievalResponder(Segments())
    nego = NegoReq(pccrr.V1_0, pccrr.V2_0)
    body = pccrr.serialize_run_request([GetBlks(IDS[0], (BlockRange(0, 1),)), nego])
    assert responder.respond_run(body).kind is ReplyKind.DROP
    two_ranges = GetBlks(IDS[1], (BlockRange(0, 1), BlockRange(2, 1)))
    body = pccrr.serialize_run_request([GetBlks(IDS[0], (BlockRange(0, 1),)), two_ranges])
    assert responder.respond_run(body).kind is ReplyKind.DROP


def test_a_major_version_not_spoken_gets_nego_resp() -> None:
    v3 = pccrr.ProtocolVersion(3, 0)
    msgs = [GetBlks(s, (BlockRange(0, 1),), version=v3) for s in IDS[:2]]
    reply = RetrievalResponder(Segments()).respond_run(pccrr.serialize_run_request(msgs))
    assert reply.kind is ReplyKind.NEGOTIATE


def test_split_runs_refuses_an_answer_for_another_segment() -> None:
    body = answer(RetrievalResponder(Segments()), IDS[:3])
    with pytest.raises(UnexpectedAnswer, match="another block"):
        pccrr_client.split_runs(body, [(IDS[0], 0), (IDS[2], 0), (IDS[1], 0)], busy=False)
