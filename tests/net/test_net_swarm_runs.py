"""Swarm.fetch_run against real retrieval servers on loopback (net.swarm_runs).

A run of consecutive blocks comes in one RUN_PATH exchange, every block verified; a server
without the extension (404 there, as Windows answers) is asked one block per request and not
banned; a peer whose run carries a bad block is banned and the block comes from another.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast

import pytest
from aiohttp import web

from peerdistd.net.discovery import Discovery, PeerHit
from peerdistd.net.http11_server import ServerConnection
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.net.swarm import Swarm
from peerdistd.proto import pccrr
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm, Segment
from peerdistd.proto.pccrr_server import RetrievalResponder

SEG = bytes(range(32))
KP = bytes(range(100, 132))
SIZE = 65536
COUNT = 20
BLOCKS = [os.urandom(SIZE) for _ in range(COUNT - 1)] + [os.urandom(1234)]
SEGMENT = Segment(
    index=0,
    offset=0,
    length=sum(len(b) for b in BLOCKS),
    block_size=SIZE,
    hod=bytes(32),
    secret=KP,
    segment_id=SEG,
    block_hashes=tuple(hashlib.sha256(b).digest() for b in BLOCKS),
)
REFS = [
    BlockRef(SEGMENT, i, i * SIZE, i * SIZE + len(b), SEGMENT.block_hashes[i])
    for i, b in enumerate(BLOCKS)
]
SHA256 = HashAlgorithm.SHA256


class Source:
    def __init__(self, blocks: Sequence[bytes]) -> None:
        self.blocks = blocks

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return range(len(self.blocks)) if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        ok = segment_id == SEG and 0 <= index < len(self.blocks)
        return self.blocks[index] if ok else None


class CountingServer(RetrievalServer):
    """Our server, counting the exchanges by path."""

    def __init__(self, source: Source) -> None:
        super().__init__(source, "127.0.0.1", 0)
        self.paths: list[bytes] = []

    def answer(
        self, conn: ServerConnection, body: bytes | bytearray, *, busy: bool
    ) -> tuple[int, bytes | bytearray, bytes]:
        self.paths.append(conn.request_path)
        return super().answer(conn, body, busy=busy)

    def answer_later(
        self, conn: ServerConnection, body: bytes | bytearray, busy: bool
    ) -> Awaitable[tuple[int, bytes | bytearray, bytes]] | None:
        later = super().answer_later(conn, body, busy)
        if later is not None:  # runs are answered on a worker thread
            self.paths.append(conn.request_path)
        return later


class FakeDiscovery:
    def __init__(self, peers: Sequence[str]) -> None:
        self.peers = peers

    async def find(
        self, segment_ids: Sequence[bytes], *, window: float = 0.3, version: int = 1
    ) -> dict[bytes, list[PeerHit]]:
        return {sid: [PeerHit(p, COUNT) for p in self.peers] for sid in segment_ids}


@asynccontextmanager
async def swarm_of(*peers: str) -> AsyncIterator[Swarm]:
    async with RetrievalClient(connections_per_peer=2) as client:
        swarm = Swarm(cast(Discovery, FakeDiscovery(peers)), client, window=0.0)
        try:
            yield swarm
        finally:
            await swarm.aclose()


@asynccontextmanager
async def standard_peer(source: Source) -> AsyncIterator[tuple[str, list[str]]]:
    """A server that knows MAGIC_PATH only (404 on RUN_PATH), like a Windows peer."""
    responder = RetrievalResponder(source)
    paths: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        paths.append(request.path)
        return web.Response(body=bytes(responder.respond(await request.read()).body))

    @web.middleware
    async def count(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        paths.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.router.add_post(pccrr.MAGIC_PATH, answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}", paths
    finally:
        await runner.cleanup()


async def test_a_run_comes_in_one_exchange_byte_exact() -> None:
    async with AsyncExitStack() as stack:
        server = CountingServer(Source(BLOCKS))
        await stack.enter_async_context(server)
        swarm = await stack.enter_async_context(swarm_of(f"127.0.0.1:{server.port}"))
        got = await swarm.fetch_run(REFS[:16], SHA256, timeout=5)
        tail = await swarm.fetch_run(REFS[16:], SHA256, timeout=5)
    assert got + tail == BLOCKS
    assert server.paths == [pccrr.RUN_PATH.encode()] * 2


async def test_a_peer_without_the_extension_is_asked_block_by_block() -> None:
    async with standard_peer(Source(BLOCKS)) as (peer, paths), swarm_of(peer) as swarm:
        got = await swarm.fetch_run(REFS[:8], SHA256, timeout=5)
        assert got == BLOCKS[:8]
        assert not swarm.banned(peer) and peer in swarm.single_peers
        paths.clear()
        assert await swarm.fetch_run(REFS[8:12], SHA256, timeout=5) == BLOCKS[8:12]
    assert paths.count(pccrr.RUN_PATH) == 0  # remembered: no second try
    assert paths.count(pccrr.MAGIC_PATH) >= 4


async def test_a_bad_block_in_a_run_bans_the_peer_and_comes_from_another() -> None:
    forged = list(BLOCKS)
    forged[3] = os.urandom(SIZE)
    async with AsyncExitStack() as stack:
        bad = await stack.enter_async_context(CountingServer(Source(forged)))
        good = CountingServer(Source(BLOCKS))
        await stack.enter_async_context(good)
        bad_peer, good_peer = f"127.0.0.1:{bad.port}", f"127.0.0.1:{good.port}"
        async with swarm_of(bad_peer, good_peer) as swarm:  # runs from 0 start at bad_peer
            got = await swarm.fetch_run(REFS[:16], SHA256, timeout=5)
            assert got == BLOCKS[:16]
            assert swarm.banned(bad_peer) and not swarm.banned(good_peer)
            assert swarm.stats.bad_blocks == 1


async def test_blocks_a_run_lacks_are_asked_of_the_others() -> None:
    partial = Source(BLOCKS[:5])  # holds blocks 0..4 only
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(CountingServer(partial))
        second = CountingServer(Source(BLOCKS))
        await stack.enter_async_context(second)
        async with swarm_of(f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}") as swarm:
            assert await swarm.fetch_run(REFS[:10], SHA256, timeout=5) == BLOCKS[:10]
            assert not swarm.banned(f"127.0.0.1:{first.port}")


async def test_nobody_holding_it_gives_none() -> None:
    async with swarm_of() as swarm:
        assert await swarm.fetch_run(REFS[:4], SHA256, timeout=1) == [None] * 4


@pytest.mark.parametrize("count", [1, 17])
async def test_what_cannot_be_a_run_is_fetched_one_by_one(count: int) -> None:
    async with AsyncExitStack() as stack:
        server = CountingServer(Source(BLOCKS))
        await stack.enter_async_context(server)
        swarm = await stack.enter_async_context(swarm_of(f"127.0.0.1:{server.port}"))
        assert await swarm.fetch_run(REFS[:count], SHA256, timeout=5) == BLOCKS[:count]
    assert server.paths == [pccrr.MAGIC_PATH.encode()] * count


async def test_a_run_cut_off_counts_as_its_blocks_failing() -> None:
    # A peer that drops every connection: one failed run of 16 blocks counts as 16 failed
    # requests (what asking block by block would have counted), so it is banned as before.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.transport.abort()

    closer = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    bad_peer = f"127.0.0.1:{closer.sockets[0].getsockname()[1]}"
    async with AsyncExitStack() as stack:
        stack.push_async_callback(closer.wait_closed)
        stack.callback(closer.close)
        good = CountingServer(Source(BLOCKS))
        await stack.enter_async_context(good)
        swarm = await stack.enter_async_context(swarm_of(bad_peer, f"127.0.0.1:{good.port}"))
        assert await swarm.fetch_run(REFS[:16], SHA256, timeout=5) == BLOCKS[:16]
        assert swarm.peer(bad_peer).errors == 16 and swarm.banned(bad_peer)
        assert good.paths == [pccrr.RUN_PATH.encode()]


async def test_a_run_overdue_at_a_silent_peer_is_asked_of_the_next_holder_as_a_run() -> None:
    # A holder that takes the request and never answers: past the run's hedge delay the
    # next holder is asked for the whole run in one exchange. Asking it block by block (as
    # before) put 16 requests into its window at once, other reads' blocks then went to the
    # silent peer, and one bad peer made a 16 MiB read 18-26x slower (issue 8).
    silent_since = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        silent_since.set()
        await reader.read()  # until the client gives up and closes
        writer.close()

    quiet = await asyncio.start_server(silent, "127.0.0.1", 0)
    slow_peer = f"127.0.0.1:{quiet.sockets[0].getsockname()[1]}"
    async with AsyncExitStack() as stack:
        stack.push_async_callback(quiet.wait_closed)
        stack.callback(quiet.close)
        good = CountingServer(Source(BLOCKS))
        await stack.enter_async_context(good)
        swarm = await stack.enter_async_context(swarm_of(slow_peer, f"127.0.0.1:{good.port}"))
        assert await swarm.fetch_run(REFS[:16], SHA256, timeout=5) == BLOCKS[:16]
        assert silent_since.is_set()  # it was asked first, and went silent
        assert good.paths == [pccrr.RUN_PATH.encode()]
        assert swarm.stats.hedges == 1
