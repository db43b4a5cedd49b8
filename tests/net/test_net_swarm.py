"""The swarm against real retrieval servers on loopback: hedged requests, the floor rate,
back-off and bans of peers that fail, and errors of the client never ending a read.

Discovery is a stub that names the holders (the real one is tested in test_net_discovery_*).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Sequence

import pytest

from peerdistd.errors import PeersBusy
from peerdistd.net.discovery import PeerHit
from peerdistd.net.hedging import HEDGE_CEILING, HEDGE_DEFAULT, HEDGE_FLOOR, LatencyWindow
from peerdistd.net.peer_health import BACKOFF_BASE, PeerHealth
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.net.swarm import Swarm
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from peerdistd.proto.pccrc_segment import Segment

SEG = bytes(range(32))
KP = bytes(range(100, 132))
BLOCKS = [bytes([i]) * 65536 for i in range(8)]
SEGMENT = Segment(
    index=0,
    offset=0,
    length=len(BLOCKS) * 65536,
    block_size=65536,
    hod=b"\0" * 32,
    secret=KP,
    segment_id=SEG,
    block_hashes=tuple(hashlib.sha256(b).digest() for b in BLOCKS),
)


def ref(index: int) -> BlockRef:
    return BlockRef(SEGMENT, index, index * 65536, (index + 1) * 65536, SEGMENT.block_hashes[index])


class Source:
    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return range(len(BLOCKS)) if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return BLOCKS[index] if segment_id == SEG else None


class Holders:
    """Discovery that always finds ``peers``."""

    def __init__(self, peers: Sequence[str]) -> None:
        self.peers = list(peers)
        self.probes = 0

    async def find(
        self, segment_ids: Sequence[bytes], *, window: float
    ) -> dict[bytes, list[PeerHit]]:
        self.probes += 1
        return {sid: [PeerHit(p, len(BLOCKS)) for p in self.peers] for sid in segment_ids}

    def forget(self, segment_ids: Sequence[bytes]) -> None:
        pass


class Silent:
    """A peer that takes connections and requests and never answers."""

    def __init__(self) -> None:
        self.requests = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                await reader.readexactly(68)  # the GETBLKS body

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            for writer in self._writers:
                writer.close()
            server.close()
            await server.wait_closed()


@contextlib.asynccontextmanager
async def swarm_of(peers: Sequence[str], **options: float) -> AsyncIterator[Swarm]:
    async with RetrievalClient() as client:
        swarm = Swarm(Holders(peers), client, **options)  # type: ignore[arg-type]
        try:
            yield swarm
        finally:
            await swarm.aclose()


def forgive_back_off(swarm: Swarm, peer: str) -> None:
    """As if the peer's back-off were over (it is asked in turn again)."""
    if peer in swarm.peers:
        swarm.peers[peer].backoff_until = 0.0


async def settled(swarm: Swarm) -> None:
    """Until the requests that lost a race have ended (each within its own timers)."""
    while swarm._lingering:
        await asyncio.wait(list(swarm._lingering))


# -- latency window and peer health (pure, with an injected clock) --------------------------


def test_hedge_delay_is_twice_the_p95_clamped() -> None:
    window = LatencyWindow()
    assert window.hedge_delay() == HEDGE_DEFAULT  # too few samples to learn from
    for _ in range(95):
        window.add(0.03)
    for _ in range(5):
        window.add(5.0)  # outliers above the 95th percentile do not move it
    assert window.p95() == 0.03 and window.hedge_delay() == pytest.approx(0.06)
    fast = LatencyWindow()
    for _ in range(50):
        fast.add(0.0001)
    assert fast.hedge_delay() == HEDGE_FLOOR
    slow = LatencyWindow()
    for _ in range(50):
        slow.add(3.0)
    assert slow.hedge_delay() == HEDGE_CEILING


def test_a_failing_peer_is_asked_last_then_banned_and_a_good_answer_forgives() -> None:
    now = [100.0]
    health = PeerHealth(ban_seconds=60, failures_to_ban=3, clock=lambda: now[0])
    assert health.order(["a", "b"], 0) == ["a", "b"]
    assert health.order(["a", "b"], 1) == ["b", "a"]  # blocks start at different peers
    health.failed("a", "reset")
    assert health.order(["a", "b"], 0) == ["b", "a"]  # backed off: asked last
    health.failed("a", "reset")  # in the same incident: the back-off is not longer
    assert health.peer("a").backoff_until == 100.0 + BACKOFF_BASE
    now[0] += BACKOFF_BASE
    assert health.order(["a", "b"], 0) == ["a", "b"]  # back-off over: in turn again
    health.answered("a")  # ... and it answered well: forgiven
    health.failed("a", "timeout")
    health.failed("a", "timeout")
    assert not health.banned("a")
    health.failed("a", "timeout")  # third failure in a row
    assert health.banned("a") and health.order(["a", "b"], 0) == ["b"]
    assert health.peer("a").errors == 5 and health.bans_made == 1
    now[0] += 60
    assert not health.banned("a") and health.order(["a", "b"], 0) == ["a", "b"]


def test_a_stall_of_many_requests_is_one_failure() -> None:
    # An honest holder that stalls once times out every request it had in flight together:
    # backed off, not banned; stalling again after its back-off counts again.
    now = [0.0]
    health = PeerHealth(ban_seconds=60, failures_to_ban=3, clock=lambda: now[0])
    for _ in range(8):
        health.failed("a", "timed out", stall=True)
    assert not health.banned("a") and health.peer("a").failures == 1
    now[0] = health.peer("a").backoff_until
    health.failed("a", "timed out", stall=True)
    now[0] = health.peer("a").backoff_until
    assert not health.banned("a")
    health.failed("a", "timed out", stall=True)  # the third incident in a row
    assert health.banned("a")


def test_back_off_doubles_per_incident() -> None:
    now = [0.0]
    health = PeerHealth(failures_to_ban=0, clock=lambda: now[0])
    lengths = []
    for _ in range(4):
        health.failed("a", "x")
        lengths.append(health.peer("a").backoff_until - now[0])
        now[0] = health.peer("a").backoff_until
    assert lengths == [BACKOFF_BASE, 2 * BACKOFF_BASE, 4 * BACKOFF_BASE, 8 * BACKOFF_BASE]
    assert not health.banned("a")  # failures_to_ban 0: failures alone never ban


# -- the swarm on loopback -------------------------------------------------------------------


async def test_a_silent_holder_is_hedged_and_then_banned() -> None:
    silent = Silent()
    async with (
        RetrievalServer(Source(), "127.0.0.1", 0) as good,
        silent.running() as quiet,
    ):
        address = f"127.0.0.1:{good.port}"
        async with swarm_of([quiet, address], failures_to_ban=2, min_rate=1 << 20) as swarm:
            # Block 0 is asked of the silent peer first (index 0 modulo two holders).
            assert swarm.health.order([quiet, address], 0)[0] == quiet
            got = await swarm.fetch(ref(0), HashAlgorithm.SHA256, timeout=5)
            assert got == BLOCKS[0] and swarm.stats.hedges == 1
            assert swarm.peers[address].bytes_from == 65536
            await settled(swarm)  # the silent peer's request failed under the floor rate
            assert swarm.stats.slow_answers == 1 and swarm.peers[quiet].failures == 1
            # Backed off: the next block is asked of the good holder first.
            assert swarm.health.order([quiet, address], 2) == [address, quiet]
            assert await swarm.fetch(ref(2), HashAlgorithm.SHA256, timeout=5) == BLOCKS[2]
            # Once the back-off is over it is asked again, fails again: banned.
            forgive_back_off(swarm, quiet)
            assert await swarm.fetch(ref(4), HashAlgorithm.SHA256, timeout=5) == BLOCKS[4]
            await settled(swarm)
            assert swarm.banned(quiet) and not swarm.banned(address)
            assert silent.requests >= 2


async def test_a_block_comes_from_the_other_holder_when_one_is_unreachable() -> None:
    async with RetrievalServer(Source(), "127.0.0.1", 0) as good:
        address = f"127.0.0.1:{good.port}"
        gone = "127.0.0.1:1"  # nothing listens there: refused at once
        async with swarm_of([gone, address], failures_to_ban=3) as swarm:
            for index in (0, 2, 4):  # each asked of the refusing holder first
                forgive_back_off(swarm, gone)
                got = await swarm.fetch(ref(index), HashAlgorithm.SHA256, timeout=5)
                assert got == BLOCKS[index]
            assert swarm.banned(gone) and swarm.peers[gone].errors == 3


class Broken(RetrievalClient):
    """A client with a defect that one peer's behaviour sets off."""

    def __init__(self, bad: str) -> None:
        super().__init__()
        self.bad = bad

    async def get_block(self, peer: str, *args: object, **kwargs: object) -> bytes | None:
        if peer == self.bad:
            raise AssertionError("a state this peer put us in")
        return await super().get_block(peer, *args, **kwargs)  # type: ignore[arg-type]


async def test_an_unexpected_client_error_is_that_peers_failure_not_the_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with RetrievalServer(Source(), "127.0.0.1", 0) as good, Broken("127.0.0.1:9") as client:
        address = f"127.0.0.1:{good.port}"
        swarm = Swarm(Holders(["127.0.0.1:9", address]), client)  # type: ignore[arg-type]
        try:
            for index in (0, 2):  # each asked of the peer that sets the defect off first
                forgive_back_off(swarm, "127.0.0.1:9")
                got = await swarm.fetch(ref(index), HashAlgorithm.SHA256, timeout=5)
                assert got == BLOCKS[index]
        finally:
            await swarm.aclose()
    assert swarm.peers["127.0.0.1:9"].failures == 2
    logged = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len([r for r in logged if r.levelname == "ERROR"]) == 1  # once, with its traceback


async def test_peers_busy_names_the_busy_holders_and_only_their_slots_are_awaited() -> None:
    # Two holders of the segment: one said it lacks block 0, the other's window is full.
    # The fetch must be told which holder is busy, and waiting for that one's slot must
    # really wait: the holder lacking the block has free slots, and waiting on "any holder
    # of the segment" returned at once, so the fetch spun until its deadline (a fifth of
    # the CPU of ten nodes reading together, docs/benchmarks.md).
    lacking, full = "127.0.0.1:7", "127.0.0.1:8"
    async with swarm_of([lacking, full]) as swarm:
        await swarm.locate([SEG], timeout=1)
        swarm.directory.lacks(SEG, lacking, 0)
        for _ in range(swarm.windows.limit):
            swarm.windows.begin(full, SEG)
        with pytest.raises(PeersBusy) as busy:
            await swarm.fetch(ref(0), HashAlgorithm.SHA256, timeout=5)
        assert busy.value.peers == (full,)
        assert swarm.windows.free(lacking)  # which is why the old wait never waited
        with pytest.raises(TimeoutError):
            await swarm.slot_freed(SEG, timeout=0.05, among=busy.value.peers)
        waiting = asyncio.ensure_future(swarm.slot_freed(SEG, timeout=5, among=busy.value.peers))
        swarm.windows.end(full, "answered")  # one of our requests there ended
        await waiting
