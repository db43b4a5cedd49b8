"""The holder directory: one cache of "who holds segment X" with one expiry, fed by discovery
and by delivered blocks, and the content trail that asks recent servers first.

The swarm runs against real retrieval servers on loopback; discovery is a stub that names the
holders and counts its probe rounds (the real one is tested in test_net_discovery_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest

from peerdistd.net.discovery import PeerHit
from peerdistd.net.holders import HolderDirectory
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.net.swarm import Swarm
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from peerdistd.proto.pccrc_segment import Segment

BLOCK = 65536
KP = bytes(range(100, 132))
A, B = bytes(range(32)), bytes(range(1, 33))


def segment(sid: bytes, index: int) -> Segment:
    blocks = [bytes([index, i]) * (BLOCK // 2) for i in range(2)]
    return Segment(
        index=index,
        offset=index * 2 * BLOCK,
        length=2 * BLOCK,
        block_size=BLOCK,
        hod=b"\0" * 32,
        secret=KP,
        segment_id=sid,
        block_hashes=tuple(hashlib.sha256(b).digest() for b in blocks),
    )


SEGMENTS = {A: segment(A, 0), B: segment(B, 1)}


def block(sid: bytes, index: int) -> bytes:
    return bytes([SEGMENTS[sid].index, index]) * (BLOCK // 2)


def ref(sid: bytes, index: int) -> BlockRef:
    seg = SEGMENTS[sid]
    start = seg.offset + index * BLOCK
    return BlockRef(seg, index, start, start + BLOCK, seg.block_hashes[index])


class Source:
    """A node holding ``held``: segment id -> block indexes (a partial holder holds some)."""

    def __init__(self, held: Mapping[bytes, Sequence[int]]) -> None:
        self.held = held

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id in self.held else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return self.held.get(segment_id, [])

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return block(segment_id, index) if index in self.held.get(segment_id, ()) else None


class Answers:
    """Discovery naming ``answers[segment]`` (a list per probe round: the last one repeats)."""

    def __init__(self) -> None:
        self.answers: dict[bytes, list[list[str]]] = {}
        self.rounds: list[tuple[bytes, ...]] = []

    async def find(
        self, segment_ids: Sequence[bytes], *, window: float
    ) -> dict[bytes, list[PeerHit]]:
        self.rounds.append(tuple(segment_ids))
        found = {}
        for sid in segment_ids:
            rounds = self.answers.get(sid, [[]])
            peers = rounds.pop(0) if len(rounds) > 1 else rounds[0]
            found[sid] = [PeerHit(p, 2) for p in peers]
        return found


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.asynccontextmanager
async def swarm_with(answers: Answers, clock: Clock | None = None) -> AsyncIterator[Swarm]:
    async with RetrievalClient() as client:
        options = {} if clock is None else {"clock": clock}
        swarm = Swarm(answers, client, **options)  # type: ignore[arg-type]
        try:
            yield swarm
        finally:
            await swarm.aclose()


def address(server: RetrievalServer) -> str:
    return f"127.0.0.1:{server.port}"


# -- the directory alone ---------------------------------------------------------------------


def test_answers_expire_after_one_ttl_and_delivered_blocks_renew_them() -> None:
    clock = Clock()
    directory = HolderDirectory(ttl=3.0, size=2, clock=clock)
    assert directory.holders(A) is None
    directory.learn({A: {"p:1": 5}, B: {}})
    assert directory.holders(A) == {"p:1": 5} and directory.holders(B) == {}  # "nobody" too
    clock.now += 2.0
    directory.served(A, "q:1")
    clock.now += 2.0  # 4 s after the answer, 2 s after q delivered
    assert directory.holders(A) == {"p:1": 5, "q:1": 1} and directory.holders(B) is None
    directory.learn({A: {}})  # a lost answer does not drop holders still trusted
    assert directory.holders(A) == {"p:1": 5, "q:1": 1}
    directory.learn({bytes(32): {}, bytes(31) + b"\1": {}})  # bounded: A, the oldest, goes
    assert directory.holders(A) is None and len(directory) == 2


def test_a_guessed_peer_that_lacks_a_block_leaves_the_entry_and_the_content_trail() -> None:
    directory = HolderDirectory()
    directory.link([A, B])
    directory.learn({A: {"p:1": 2}})
    directory.served(A, "p:1")
    assert directory.guess(B, lambda _: True) == ["p:1"] and directory.guessed(B)
    directory.lacks(B, "p:1", 0)
    assert directory.holders(B) is None  # no answer left: asked again, not "nobody"
    assert directory.guess(B, lambda _: True) == []
    directory.lacks(A, "p:1", 1)  # a holder discovery named: it may hold A's other blocks
    assert directory.holders(A) == {"p:1": 2}
    assert not directory.may_hold(A, "p:1", 1) and directory.may_hold(A, "p:1", 0)


def test_an_expired_answer_is_guessed_from_once_then_discovery_asks_again() -> None:
    # A holder that missed one discovery round (it was restarting) was never found again
    # while another holder was known: each guess was made from the one before.
    clock = Clock()
    directory = HolderDirectory(ttl=3.0, clock=clock)
    directory.learn({A: {"p:1": 2}})
    clock.now += 3.0
    assert directory.guess(A, lambda _: True) == ["p:1"] and directory.guessed(A)
    clock.now += 3.0  # the guess expired, and p delivered nothing meanwhile
    assert directory.holders(A) is None
    assert directory.guess(A, lambda _: True) == []  # discovery's turn
    directory.learn({A: {"p:1": 2, "q:1": 2}})
    assert directory.holders(A) == {"p:1": 2, "q:1": 2}


# -- the swarm ------------------------------------------------------------------------------


async def test_a_later_segment_is_asked_of_the_peer_that_served_the_one_before() -> None:
    async with RetrievalServer(Source({A: [0, 1], B: [0, 1]}), "127.0.0.1", 0) as p:
        answers = Answers()
        answers.answers[A] = [[address(p)]]  # discovery would not find B: only P is asked
        async with swarm_with(answers) as swarm:
            assert await swarm.locate([A], timeout=1.0) == {A: 2}
            assert await swarm.fetch(ref(A, 0), HashAlgorithm.SHA256, timeout=2.0) == block(A, 0)
            # The engine's next window starts at the segment before: B follows A's trail.
            assert B in await swarm.locate([A, B], timeout=1.0)
            assert await swarm.fetch(ref(B, 0), HashAlgorithm.SHA256, timeout=2.0) == block(B, 0)
            assert answers.rounds == [(A,)]  # no discovery round for B


async def test_a_wrong_guess_falls_back_to_discovery_at_once_without_blame() -> None:
    async with (
        RetrievalServer(Source({A: [0, 1]}), "127.0.0.1", 0) as p,
        RetrievalServer(Source({B: [0, 1]}), "127.0.0.1", 0) as q,
    ):
        answers = Answers()
        answers.answers = {A: [[address(p)]], B: [[address(q)]]}
        async with swarm_with(answers) as swarm:
            await swarm.locate([A], timeout=1.0)
            assert await swarm.fetch(ref(A, 0), HashAlgorithm.SHA256, timeout=2.0) == block(A, 0)
            await swarm.locate([A, B], timeout=1.0)  # B guessed on P
            assert await swarm.fetch(ref(B, 1), HashAlgorithm.SHA256, timeout=2.0) == block(B, 1)
            assert answers.rounds == [(A,), (B,)]
            assert swarm.peer(address(p)).failures == 0 and not swarm.banned(address(p))
            assert swarm.directory.holders(B) == {address(q): 2}


async def test_a_partial_holder_lacking_a_block_is_passed_over_without_blame() -> None:
    # P holds block 0 of A only (it is still downloading). Its empty MSG_BLK for block 1 means
    # "not held": Q is asked, P is neither failed nor banned, and is not asked for block 1
    # again while the answer holds (it still is for block 0).
    async with (
        RetrievalServer(Source({A: [0]}), "127.0.0.1", 0) as p,
        RetrievalServer(Source({A: [0, 1]}), "127.0.0.1", 0) as q,
    ):
        answers = Answers()
        answers.answers[A] = [[address(q), address(p)]]  # block 1 is asked of P first
        async with swarm_with(answers) as swarm:
            for _ in range(2):
                got = await swarm.fetch(ref(A, 1), HashAlgorithm.SHA256, timeout=2.0)
                assert got == block(A, 1)
            assert not swarm.directory.may_hold(A, address(p), 1)
            assert swarm.directory.may_hold(A, address(p), 0)
            assert swarm.peer(address(p)).failures == 0 and not swarm.banned(address(p))
            assert len(answers.rounds) == 1


async def test_the_swarm_trusts_an_answer_for_one_ttl_then_asks_its_holders_directly() -> None:
    clock = Clock()
    async with RetrievalServer(Source({A: [0, 1]}), "127.0.0.1", 0) as p:
        answers = Answers()
        answers.answers[A] = [[address(p)]]
        async with swarm_with(answers, clock) as swarm:
            await swarm.locate([A, B], timeout=1.0)
            assert await swarm.locate([A, B], timeout=1.0) == {A: 2}  # "nobody" for B, too
            assert len(answers.rounds) == 1
            clock.now += swarm.directory.ttl
            assert await swarm.locate([A, B], timeout=1.0) == {A: 1}
            assert answers.rounds == [(A, B), (B,)]  # "nobody" asked again; P guessed for A
            assert swarm.directory.guessed(A)


def test_a_holder_named_by_single_flight_comes_first_and_replaces_a_guess() -> None:
    directory = HolderDirectory()
    directory.link([A, B])
    directory.learn({A: {"p:1": 2}})
    directory.served(A, "p:1")
    directory.guess(B, lambda _: True)
    directory.named(B, "q:1")  # its word beats the trail's guess
    assert directory.holders(B) == {"q:1": 1} and not directory.guessed(B)
    directory.named(A, "q:1")
    assert list(directory.holders(A) or ()) == ["q:1", "p:1"]


# -- a guess that fails asks about the rest of the window in one round ------------------------

CONTENT = [bytes([n]) * 32 for n in range(10, 20)]  # ten segments of one content, in order
SEGMENTS.update({sid: segment(sid, n) for n, sid in enumerate(CONTENT)})


def test_the_segments_after_one_without_an_answer_are_found_in_content_order() -> None:
    directory = HolderDirectory()
    lead, *rest = CONTENT
    directory.link([lead, *rest[3:]])  # a window further on: its lead is not followed by it
    directory.link(CONTENT[:5])  # the window at the start, overlapping that one
    directory.learn({CONTENT[2]: {"p:1": 2}})  # answered: not asked about again
    directory.guess(CONTENT[3], lambda _: False)  # nothing to guess from: still unanswered
    near = directory.unanswered_near
    assert near(CONTENT[1], after=3, before=0, steps=64) == [CONTENT[3], CONTENT[4], CONTENT[5]]
    assert near(lead, after=3, before=3, steps=64) == []  # what follows a lead is not known
    assert near(CONTENT[4], after=40, before=0, steps=64) == CONTENT[5:]
    assert near(CONTENT[4], after=40, before=0, steps=2) == CONTENT[5:7]
    assert near(CONTENT[-1], after=40, before=0, steps=64) == []
    # Before it, nearest first (a run's blocks whose guesses fail in any order).
    assert near(CONTENT[5], after=1, before=9, steps=64) == [
        CONTENT[4],
        CONTENT[3],
        CONTENT[1],
        CONTENT[6],
    ]


@pytest.mark.parametrize("order", ["forwards", "backwards"])
async def test_a_failed_guess_asks_about_the_rest_of_the_window_in_one_round(order: str) -> None:
    # Ten nodes reading one content together: the trail's peer is no further on than we are,
    # so its guess fails for nearly every segment. Each failure asked about its segment alone
    # (one probe per segment, parsed by every other node); now the segments around it with no
    # answer are asked about in one more round, and the reads of those wait for no probe.
    # Backwards: the blocks of a run are asked for together and fail in any order.
    first, *rest = CONTENT
    reads = rest if order == "forwards" else rest[::-1]
    async with (
        RetrievalServer(Source({first: [0, 1]}), "127.0.0.1", 0) as p,
        RetrievalServer(Source({sid: [0, 1] for sid in CONTENT}), "127.0.0.1", 0) as q,
    ):
        answers = Answers()
        answers.answers = {first: [[address(p)]], **{sid: [[address(q)]] for sid in rest}}
        async with swarm_with(answers) as swarm:
            await swarm.locate([first], timeout=1.0)
            assert await swarm.fetch(ref(first, 0), HashAlgorithm.SHA256, timeout=2.0)
            located = await swarm.locate(CONTENT, timeout=1.0)  # the rest guessed on P
            assert set(located) == set(CONTENT) and answers.rounds == [(first,)]
            for sid in reads:
                got = await swarm.fetch(ref(sid, 1), HashAlgorithm.SHA256, timeout=2.0)
                assert got == block(sid, 1)
            assert answers.rounds == [(first,), (reads[0],), tuple(reads[1:])]
            # Every segment got its discovery answer: Q, not the guess.
            assert all(swarm.directory.holders(sid) == {address(q): 2} for sid in rest)
            assert swarm.peer(address(p)).failures == 0


async def test_a_segment_a_round_in_flight_asks_about_is_not_asked_about_again() -> None:
    gate = asyncio.Event()
    sent: asyncio.Queue[None] = asyncio.Queue()

    class Held(Answers):
        async def find(
            self, segment_ids: Sequence[bytes], *, window: float
        ) -> dict[bytes, list[PeerHit]]:
            found = await super().find(segment_ids, window=window)
            sent.put_nowait(None)
            await gate.wait()  # the answers are on their way
            return found

    answers = Held()
    async with swarm_with(answers) as swarm:
        window = asyncio.ensure_future(swarm.locate(CONTENT[:6], timeout=1.0))
        await sent.get()
        later = asyncio.ensure_future(swarm.locate([CONTENT[0], *CONTENT[4:8]], timeout=1.0))
        fetch = asyncio.ensure_future(
            swarm.fetch(ref(CONTENT[5], 0), HashAlgorithm.SHA256, timeout=1.0)
        )
        await sent.get()  # the later window's round, for the two segments no round asks about
        gate.set()
        assert await window == {} and await later == {} and await fetch is None
        assert answers.rounds == [tuple(CONTENT[:6]), tuple(CONTENT[6:8])]


async def test_a_guess_that_fails_after_a_round_answered_its_segment_sends_no_probe() -> None:
    # The guessed peer's "not held" came after the round about the segments around another
    # one had answered for this one: a probe for it alone was sent all the same (~80 of the
    # ~150 rounds per node when ten nodes read together).
    first, second, third, *later = CONTENT
    gate, p_asked, p_may_answer = asyncio.Event(), asyncio.Event(), asyncio.Event()

    class Gated(Answers):
        async def find(
            self, segment_ids: Sequence[bytes], *, window: float
        ) -> dict[bytes, list[PeerHit]]:
            if third in segment_ids:
                await gate.wait()
            return await super().find(segment_ids, window=window)

    async with (
        RetrievalServer(Source({first: [0, 1]}), "127.0.0.1", 0) as p,
        RetrievalServer(Source({sid: [0, 1] for sid in CONTENT}), "127.0.0.1", 0) as q,
    ):
        answers = Gated()
        answers.answers = {first: [[address(p)]], **{sid: [[address(q)]] for sid in CONTENT[1:]}}
        async with swarm_with(answers) as swarm:
            real = swarm.client.get_block

            async def slow_p(peer: str, *args: object, **kwargs: object) -> bytes | None:
                if peer == address(p) and args[0] == third and not p_asked.is_set():
                    p_asked.set()
                    await p_may_answer.wait()
                return await real(peer, *args, **kwargs)  # type: ignore[arg-type]

            swarm.client.get_block = slow_p  # type: ignore[method-assign]
            await swarm.locate([first], timeout=1.0)
            assert await swarm.fetch(ref(first, 0), HashAlgorithm.SHA256, timeout=2.0)
            await swarm.locate(CONTENT, timeout=1.0)  # the rest guessed on P
            assert await swarm.fetch(ref(second, 0), HashAlgorithm.SHA256, timeout=2.0)
            around = swarm.rounds.of(third)  # asked about with second's neighbours
            assert around is not None
            reading = asyncio.ensure_future(
                swarm.fetch(ref(third, 0), HashAlgorithm.SHA256, timeout=2.0)
            )
            await p_asked.wait()  # third is being asked of P, the guess
            gate.set()
            await around  # and the round answers for it meanwhile: Q holds it
            p_may_answer.set()
            assert await reading == block(third, 0)
            assert answers.rounds == [(first,), (second,), (third, *later)]
