"""A read whose block is part of another read's run that left it out asks for it again.

PeerNetwork.fetch_run gives up only on a run's first block: a later block it could not get
in time (its holder slow, busy or failing) comes back as None. A read waiting on that run for
such a block must not answer MISSING_DATA for data its peers hold (the application would go
to the origin for it): it asks for the block alone once, within its timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from peerdistd.errors import PeersBusy
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from tests.content import BLOCK
from tests.engine.test_engine_peers import UID, ScriptedPeers, make_engine, setup, stores

__all__ = ["stores"]  # the fixture


class FirstRunShort(ScriptedPeers):
    """The first run delivers only its first block (once the test lets it finish)."""

    def __init__(self, data: bytes, held: Mapping[bytes, int]) -> None:
        super().__init__(data, held)
        self.run_started = asyncio.Event()
        self.finish_run = asyncio.Event()
        self.singles: list[int] = []
        self.shorted = False

    async def locate(
        self,
        segment_ids: Sequence[bytes],
        *,
        timeout: float,
        probed: Callable[[bool], None] | None = None,
    ) -> Mapping[bytes, int]:
        return {s: n for s, n in self.held.items() if s in segment_ids}

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        self.singles.append(ref.index)
        return self.data[ref.start : ref.end]

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        if self.shorted:
            return [self.data[r.start : r.end] for r in refs]
        self.shorted = True
        self.run_started.set()
        await self.finish_run.wait()
        first = refs[0]
        return [self.data[first.start : first.end]] + [None] * (len(refs) - 1)


async def two_reads_sharing_a_short_run(stores, kind: type[FirstRunShort]):
    """Read 1 asks for blocks 0-3 as one run; read 2, for block 2, waits on that run, which
    brings block 0 only. The peers, what data they hold, and what each read got."""
    data, ci, _, _, _ = setup(stores, blocks=8)
    peers = kind(data, {ci.segments[0].segment_id: 8})
    engine = make_engine(stores, peers)
    h1 = engine.open_content(UID, ci.to_bytes()).id
    h2 = engine.open_content(UID, ci.to_bytes()).id
    events = engine.events.subscribe()
    first = asyncio.ensure_future(engine.block_read(UID, h1, 0, 4 * BLOCK, 5.0, ()))
    await peers.run_started.wait()  # blocks 0-3 go as one run
    second = asyncio.ensure_future(engine.block_read(UID, h2, 2 * BLOCK, BLOCK, 5.0, ()))
    async for event in events:  # published just before it waits on the first read's run
        if event.name == "START_COMPLETE" and event.data["handle"] == h2:
            break
    events.close()
    peers.finish_run.set()
    try:
        return peers, data, await first, await second
    finally:
        await engine.aclose()


async def test_a_block_a_shared_run_left_out_is_asked_for_again(stores) -> None:
    peers, data, got1, got2 = await two_reads_sharing_a_short_run(stores, FirstRunShort)
    assert got1.data == data[:BLOCK]
    assert got2.data == data[2 * BLOCK : 3 * BLOCK]  # not MISSING_DATA
    assert 2 in peers.singles  # asked for alone


class RetryFindsBusy(FirstRunShort):
    """The single retry first finds every holder at its upload limit; one frees a slot."""

    def __init__(self, data: bytes, held: Mapping[bytes, int]) -> None:
        super().__init__(data, held)
        self.waited_for: list[tuple[str, ...]] = []

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        self.singles.append(ref.index)
        if len(self.singles) == 1:
            raise PeersBusy("every holder is at its upload limit", ("busy-holder",))
        return self.data[ref.start : ref.end]

    async def slot_freed(
        self, segment_id: bytes, *, timeout: float, among: Sequence[str] = ()
    ) -> None:
        self.waited_for.append(tuple(among))


async def test_a_retry_that_finds_its_peers_busy_waits_for_their_slot(stores) -> None:
    # A fetch holding none of this node's transfer slots (this retry, or a fetch from the
    # node single flight named) answered TIMEOUT at once when its peers were busy.
    peers, data, got1, got2 = await two_reads_sharing_a_short_run(stores, RetryFindsBusy)
    assert got1.data == data[:BLOCK]
    assert got2.data == data[2 * BLOCK : 3 * BLOCK]  # not TIMEOUT
    assert peers.singles == [2, 2]
    # It waited for the slot of the holder that was busy, not of any holder of the segment
    # (one lacking the block may have free slots: waiting on it spun until the deadline).
    assert peers.waited_for == [("busy-holder",)]
