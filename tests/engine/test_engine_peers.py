"""Engine semantics that involve peers, with the real block cache and a scripted peer network
at the engine's seam (the PeerNetwork protocol): timeouts, aborts, flow control, events."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from peerdistd import errors
from peerdistd.engine.core import Engine, EngineSettings
from peerdistd.errors import PeerUnavailable
from peerdistd.proto.pccrc import BlockRef, ContentInformation, HashAlgorithm
from peerdistd.store.blockcache import BlockCache
from peerdistd.store.publications import PublicationStore
from tests.content import BLOCK, PASSPHRASE, content, content_information

UID = 1000
PEER_ACCEPTED = ("PEER_ACCEPTED", None, None)
LIMIT = "STREAM_LIMIT_REACHED"


class ScriptedPeers:
    """Peers that hold given blocks; a fetch completes when the test releases it."""

    def __init__(self, data: bytes, held: Mapping[bytes, int]) -> None:
        self.data = data
        self.held = dict(held)
        self.gates: dict[int, asyncio.Event] = {}
        self.fetches: list[int] = []
        self.locates = 0
        self.hints: list[Sequence[bytes]] = []
        self.started = asyncio.Event()  # set when the first fetch reaches a peer
        self.runs: list[list[int]] = []  # block indexes of each fetch_run

    def gate(self, start: int) -> asyncio.Event:
        return self.gates.setdefault(start, asyncio.Event())

    async def locate(
        self,
        segment_ids: Sequence[bytes],
        *,
        timeout: float,
        probed: Callable[[bool], None] | None = None,
    ) -> Mapping[bytes, int]:
        self.locates += 1
        return {s: n for s, n in self.held.items() if s in segment_ids}

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        self.fetches.append(ref.start)
        self.started.set()
        try:
            await asyncio.wait_for(self.gate(ref.start).wait(), timeout)
        except TimeoutError:
            raise PeerUnavailable("peers too slow") from None
        return self.data[ref.start : ref.end]

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        self.runs.append([r.index for r in refs])
        return list(
            await asyncio.gather(*(self.fetch(r, algorithm, timeout=timeout) for r in refs))
        )

    def prefetch_hint(self, segment_ids: Sequence[bytes]) -> None:
        self.hints.append(segment_ids)

    def add_holder(self, segment_ids: Sequence[bytes], endpoint: str) -> None:
        return None

    def at_limit(self, segment_id: bytes) -> bool:
        return False

    async def slot_freed(
        self, segment_id: bytes, *, timeout: float, among: Sequence[str] = ()
    ) -> None:
        return None


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[BlockCache, PublicationStore]]:
    with BlockCache.open(tmp_path / "cache", limit_bytes=1 << 30) as cache:
        pubs = PublicationStore.open(tmp_path / "pubs.db")
        yield cache, pubs
        pubs.close()


def make_engine(
    stores: tuple[BlockCache, PublicationStore], peers: ScriptedPeers, max_inflight: int = 32
) -> Engine:
    cache, pubs = stores
    return Engine(
        cache, pubs, PASSPHRASE, peers=peers, settings=EngineSettings(max_inflight=max_inflight)
    )


def setup(stores: tuple[BlockCache, PublicationStore], blocks: int = 4, **kw: int):
    data = content(blocks * BLOCK, seed=31)
    ci: ContentInformation = content_information(data)
    peers = ScriptedPeers(data, {ci.segments[0].segment_id: blocks})
    engine = make_engine(stores, peers, **kw)
    handle = engine.open_content(UID, ci.to_bytes())
    return data, ci, peers, engine, handle.id


async def test_read_from_peer_caches_and_reads_ahead(stores) -> None:
    data, _, peers, engine, h = setup(stores)
    for start in range(0, len(data), BLOCK):
        peers.gate(start).set()
    result = await engine.stream_read(UID, h, 4 * BLOCK, 5.0, ())
    assert result.offset == 0 and result.data == data[: len(result.data)]
    await asyncio.gather(*engine._tasks, return_exceptions=True)
    # Read-ahead fetched the rest once; now it is all local and no peer is asked again.
    got = result.data
    while len(got) < len(data):
        got += (await engine.stream_read(UID, h, 4 * BLOCK, 0, ())).data
    assert got == data
    assert sorted(peers.fetches) == list(range(0, len(data), BLOCK))
    assert engine.stats.bytes_from_peers == len(data)
    await engine.aclose()


async def test_timeout_reports_range_and_advances(stores) -> None:
    data, _, _, engine, h = setup(stores)
    with pytest.raises(errors.Timeout) as info:
        await engine.stream_read(UID, h, BLOCK, 0.05, ())
    assert (info.value.offset, info.value.length) == (0, len(data))
    offset, _ = engine.available(UID, h)
    assert offset == len(data)
    assert engine.stats.reads_timeout == 1
    await engine.aclose()


async def test_missing_data_excludes_what_peers_hold(stores) -> None:
    data = content(2 * 32 * 1024 * 1024 // 64, seed=32)  # one segment
    ci = content_information(data)
    peers = ScriptedPeers(data, {})  # nobody holds anything
    engine = make_engine(stores, peers)
    h = engine.open_content(UID, ci.to_bytes()).id
    with pytest.raises(errors.MissingData) as info:
        await engine.block_read(UID, h, 1000, BLOCK, 2.0, ())
    assert (info.value.offset, info.value.length) == (1000, len(data) - 1000)
    assert peers.locates == 1 and peers.fetches == []
    await engine.aclose()


async def test_timeout_zero_sends_nothing(stores) -> None:
    _, _, peers, engine, h = setup(stores)
    with pytest.raises(errors.MissingData):
        await engine.stream_read(UID, h, BLOCK, 0, ())
    assert (peers.locates, peers.fetches) == (0, [])
    await engine.aclose()


async def test_close_aborts_pending_reads(stores) -> None:
    _, _, peers, engine, h = setup(stores)
    first = asyncio.ensure_future(engine.stream_read(UID, h, BLOCK, 30.0, ()))
    queued = asyncio.ensure_future(engine.stream_read(UID, h, BLOCK, 30.0, ()))
    await peers.started.wait()  # the first read reached the peer
    engine.close(UID, h)
    for task in (first, queued):
        with pytest.raises(errors.OperationAborted):
            await task
    assert engine.stats.reads_aborted == 2
    with pytest.raises(errors.InvalidHandle):
        engine.available(UID, h)
    await engine.aclose()


async def test_peer_reads_fetch_runs_of_consecutive_blocks(stores) -> None:
    data, _, peers, engine, h = setup(stores, blocks=40)
    for start in range(0, len(data), BLOCK):
        peers.gate(start).set()
    got = b""
    while len(got) < len(data):
        got += (await engine.stream_read(UID, h, 20 * BLOCK, 5.0, ())).data
    await asyncio.gather(*engine._tasks, return_exceptions=True)
    assert got == data
    # The read's first 16 blocks as one run, read-ahead on from there in runs of up to 16;
    # every block asked for once.
    assert peers.runs[:2] == [list(range(16)), list(range(16, 32))]
    assert all(len(r) <= 16 and r == list(range(r[0], r[0] + len(r))) for r in peers.runs)
    assert sorted(peers.fetches) == list(range(0, len(data), BLOCK))
    await engine.aclose()


async def test_fail_blocked_and_queued_reads(stores) -> None:
    data, ci, peers, engine, h = setup(stores, blocks=2, max_inflight=1)
    h2 = engine.open_content(UID, ci.to_bytes()).id
    events = engine.events.subscribe()
    first = asyncio.ensure_future(engine.block_read(UID, h, 0, BLOCK, 30.0, ()))
    await peers.started.wait()
    # The only slot is taken: fail_blocked fails at once, the default queues.
    with pytest.raises(errors.StreamLimitReached):
        await engine.block_read(UID, h2, BLOCK, BLOCK, 30.0, ("fail_blocked",))
    queued = asyncio.ensure_future(
        engine.block_read(UID, h2, BLOCK, BLOCK, 30.0, ("indicate_peer_accept",))
    )
    await engine.slots.queued.wait()  # the read is queued for the slot
    peers.gate(0).set()
    assert (await first).data == data[:BLOCK]
    peers.gate(BLOCK).set()
    assert (await queued).data == data[BLOCK:]
    by_read: dict[str, list[tuple[str, object, object]]] = {}
    count = 0
    async for event in events:
        by_read.setdefault(event.data["read_id"], []).append(
            (event.name, event.data.get("status"), event.data.get("peer_accepted"))
        )
        count += 1
        if count == 7:
            break
    # One read took the slot at once, one failed at once, one queued and was accepted: its
    # START_COMPLETE came at once (not accepted yet), its PEER_ACCEPTED with the slot.
    assert sorted(by_read.values()) == [
        [("START_COMPLETE", "OK", False), PEER_ACCEPTED, ("SHUTDOWN_COMPLETE", "OK", None)],
        [("START_COMPLETE", "OK", True), ("SHUTDOWN_COMPLETE", "OK", None)],
        [
            ("START_COMPLETE", "STREAM_LIMIT_REACHED", False),
            ("SHUTDOWN_COMPLETE", "STREAM_LIMIT_REACHED", None),
        ],
    ]
    assert engine.stats.reads_stream_limit == 1
    await engine.aclose()


async def test_concurrent_reads_of_one_block_fetch_once(stores) -> None:
    data, ci, peers, engine, _ = setup(stores, blocks=1)
    handles = [engine.open_content(UID, ci.to_bytes()).id for _ in range(5)]
    reads = [asyncio.ensure_future(engine.block_read(UID, x, 0, BLOCK, 30.0, ())) for x in handles]
    await peers.started.wait()
    peers.gate(0).set()
    assert all(r.data == data for r in await asyncio.gather(*reads))
    assert peers.fetches == [0]
    await engine.aclose()


async def test_shutdown_on_fail_closes_the_handle(stores) -> None:
    _, _, _, engine, h = setup(stores)
    with pytest.raises(errors.MissingData):
        await engine.stream_read(UID, h, BLOCK, 0, ("shutdown_on_fail",))
    with pytest.raises(errors.InvalidHandle):
        engine.available(UID, h)
    await engine.aclose()


async def test_immediate_flag_starts_discovery(stores) -> None:
    _, ci, peers, engine, _ = setup(stores)
    engine.open_content(UID, ci.to_bytes(), ("immediate",))
    assert peers.hints == [[ci.segments[0].segment_id]]
    await engine.aclose()


async def test_idle_handles_are_reclaimed(stores) -> None:
    _, _, _, engine, h = setup(stores)
    handle = engine.handles[h]
    assert engine.reclaim_idle(handle.last_used + 10) == 0
    assert engine.reclaim_idle(handle.last_used + engine.settings.handle_idle_timeout + 1) == 1
    assert h not in engine.handles
    await engine.aclose()


async def test_handles_on_one_content_share_one_parsed_view(stores) -> None:
    _, ci, _, engine, h = setup(stores)
    others = [engine.open_content(UID, ci.to_bytes()).id for _ in range(100)]
    views = {id(engine.handles[x].view) for x in [h, *others]}
    assert len(views) == 1
    assert all(not engine.handles[x].ci_bytes for x in others)  # no raw copy kept either
    engine.close(UID, h)
    assert engine.available(UID, others[0]) == (0, 0)
    await engine.aclose()


async def test_a_fetch_nobody_awaits_any_more_fails_quietly(stores) -> None:
    """A read-ahead or timed-out read's fetch that fails later (no peer delivered) is an
    expected outcome, not an unhandled error: ten nodes at once logged hundreds of asyncio
    "Task exception was never retrieved" ERRORs with tracebacks for these."""
    loop = asyncio.get_running_loop()
    reported: list[Mapping[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        _, _, _, engine, h = setup(stores)
        with pytest.raises(errors.Timeout):
            await engine.stream_read(UID, h, BLOCK, 0.05, ())
        fetches = list(engine._tasks)
        assert fetches  # the read's fetch outlived the read
        await asyncio.wait(fetches)  # waits without taking their outcome
        del fetches
        gc.collect()
        assert [c.get("message") for c in reported] == []
        await engine.aclose()
    finally:
        loop.set_exception_handler(None)
