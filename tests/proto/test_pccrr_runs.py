"""The RUN_PATH extension, sans-IO: runs of MSG_BLK answers in one body (proto.pccrr).

A peerdistd server answers a GETBLKS for N blocks posted to RUN_PATH with one MSG_BLK per
block, back to back; the standard path keeps answering the lowest block only (3.2.5.3).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from peerdistd.proto import pccrr, pccrr_client
from peerdistd.proto.pccrr import RUN_LIMIT, Blk, BlockRange, GetBlks, NegoReq
from peerdistd.proto.pccrr_client import Outcome, UnexpectedAnswer
from peerdistd.proto.pccrr_server import ReplyKind, RetrievalResponder

SEG = bytes(range(32))
KP = bytes(range(64, 96))


class MemorySource:
    def __init__(self, blocks: dict[int, bytes]) -> None:
        self.blocks = blocks

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return sorted(self.blocks) if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return self.blocks.get(index) if segment_id == SEG else None


class RunSource(MemorySource):
    """A source that reads runs at once (the block cache's ``read_proven_run``)."""

    def __init__(self, blocks: dict[int, bytes]) -> None:
        super().__init__(blocks)
        self.single_reads: list[int] = []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        self.single_reads.append(index)
        return super().read_block(segment_id, index)

    def read_run(self, segment_id: bytes, first: int, count: int) -> tuple[list[bytes], int]:
        if segment_id != SEG:
            return [], 0
        run: list[bytes] = []
        while len(run) < count and first + len(run) in self.blocks:
            run.append(self.blocks[first + len(run)])
        after = [i for i in sorted(self.blocks) if i >= first + len(run)]
        return run, after[0] if after else 0


BLOCKS = {i: os.urandom(65536) for i in range(40) if i not in (6, 7)}
BLOCKS[40] = os.urandom(1000)  # a short last block


@pytest.fixture(params=["block-by-block", "run-source"])
def responder(request: pytest.FixtureRequest) -> RetrievalResponder:
    source = MemorySource if request.param == "block-by-block" else RunSource
    return RetrievalResponder(source(BLOCKS))


def test_a_run_source_reads_the_held_run_at_once() -> None:
    source = RunSource(BLOCKS)
    body = RetrievalResponder(source).respond_run(pccrr_client.block_run_request(SEG, 2, 8)).body
    answers = pccrr_client.split_run(bytes(body), SEG, 2, 8, busy=False)
    assert source.single_reads == [6, 7, 8, 9]  # after the gap, block by block as before
    got = [a if isinstance(a, Outcome) else (a.block_index, a.next_block_index) for a in answers]
    assert got == [
        (2, 3),
        (3, 4),
        (4, 5),
        (5, 8),
        Outcome.MISSING,
        Outcome.MISSING,
        (8, 9),
        (9, 10),
    ]
    assert [plain(answers[n]) for n in (0, 3, 6)] == [BLOCKS[2], BLOCKS[5], BLOCKS[8]]


def run(responder: RetrievalResponder, index: int, count: int, busy: bool = False) -> bytes:
    reply = responder.respond_run(pccrr_client.block_run_request(SEG, index, count), busy=busy)
    assert reply.kind is not ReplyKind.DROP
    return bytes(reply.body)


def plain(blk: Blk | Outcome | None, length: int = 65536) -> bytes:
    assert isinstance(blk, Blk)
    (data,) = pccrr_client.decrypt_block(blk, KP, length)
    return data


def test_a_run_answers_every_block_byte_exact(responder: RetrievalResponder) -> None:
    body = run(responder, 8, RUN_LIMIT)
    answers = pccrr_client.split_run(body, SEG, 8, RUN_LIMIT, busy=False)
    assert len(answers) == RUN_LIMIT
    for n, answer in enumerate(answers):
        assert isinstance(answer, Blk) and answer.block_index == 8 + n
        assert plain(answer) == BLOCKS[8 + n]
    # Each message is exactly what the one-block path sends (IVs aside): same codec.
    first = pccrr.parse_response(body[: 4 + int.from_bytes(body[:4], "big")])
    assert isinstance(first, Blk) and first.next_block_index == 9


def test_blocks_not_held_are_empty_answers_in_place(responder: RetrievalResponder) -> None:
    answers = pccrr_client.split_run(run(responder, 4, 5), SEG, 4, 5, busy=False)
    assert [a if isinstance(a, Outcome) else a.block_index for a in answers] == [
        4,
        5,
        Outcome.MISSING,
        Outcome.MISSING,
        8,
    ]
    assert plain(answers[4]) == BLOCKS[8]


def test_the_short_last_block_and_past_the_end(responder: RetrievalResponder) -> None:
    answers = pccrr_client.split_run(run(responder, 39, 3), SEG, 39, 3, busy=False)
    assert plain(answers[0]) == BLOCKS[39]
    assert plain(answers[1], 1000) == BLOCKS[40]
    assert answers[2] is Outcome.MISSING


def test_a_run_is_capped_at_the_run_limit(responder: RetrievalResponder) -> None:
    answers = pccrr_client.split_run(run(responder, 0, 200), SEG, 0, 200, busy=False)
    assert len(answers) == RUN_LIMIT


def test_busy_gets_the_one_empty_answer(responder: RetrievalResponder) -> None:
    answers = pccrr_client.split_run(run(responder, 0, 4, busy=True), SEG, 0, 4, busy=True)
    assert answers == [Outcome.BUSY]


def test_an_unknown_segment_gets_the_one_empty_answer() -> None:
    responder = RetrievalResponder(MemorySource({}))
    body = responder.respond_run(pccrr_client.block_run_request(bytes(32), 0, 4)).body
    assert pccrr_client.split_run(body, bytes(32), 0, 4, busy=False) == [Outcome.MISSING]


def test_other_requests_on_the_run_path_are_answered_as_usual(
    responder: RetrievalResponder,
) -> None:
    nego = pccrr.serialize(NegoReq(pccrr.V1_0, pccrr.V2_0))
    assert responder.respond_run(nego).kind is ReplyKind.NEGOTIATE
    one = responder.respond_run(pccrr_client.block_request(SEG, 3))
    assert one.kind is ReplyKind.BLOCK and one.block_bytes == 65536
    assert responder.respond_run(b"garbage" * 4).kind is ReplyKind.DROP


def test_the_standard_path_still_answers_the_lowest_block_only(
    responder: RetrievalResponder,
) -> None:
    # [MS-PCCRR] 3.2.5.3: Windows and iPXE never see a run.
    reply = responder.respond(pccrr.serialize(GetBlks(SEG, (BlockRange(8, 4),))))
    msg = pccrr.parse_response(reply.body)
    assert isinstance(msg, Blk) and msg.block_index == 8


def test_split_run_refuses_what_was_not_asked(responder: RetrievalResponder) -> None:
    body = run(responder, 8, 4)
    with pytest.raises(UnexpectedAnswer, match="more than"):
        pccrr_client.split_run(body, SEG, 8, 3, busy=False)
    with pytest.raises(UnexpectedAnswer, match="another block"):
        pccrr_client.split_run(body, SEG, 9, 4, busy=False)
    with pytest.raises(UnexpectedAnswer, match="cut inside a message"):
        pccrr_client.split_run(body[:-1], SEG, 8, 4, busy=False)
    with pytest.raises(UnexpectedAnswer, match="cut inside a transport header"):
        pccrr_client.split_run(body + b"\0\0", SEG, 8, 5, busy=False)
    with pytest.raises(UnexpectedAnswer, match="empty"):
        pccrr_client.split_run(b"", SEG, 8, 4, busy=False)


def test_fewer_answers_than_asked_are_accepted(responder: RetrievalResponder) -> None:
    body = run(responder, 8, 2)
    assert len(pccrr_client.split_run(body, SEG, 8, 5, busy=False)) == 2
