"""RetrievalServer answers a run of blocks (RUN_PATH) from a worker thread, over real loopback
HTTP: the event loop serves other connections meanwhile, requests pipelined behind a run on
its connection are answered after it and in order, a connection that goes away while its
run is being made frees its upload slots once the run is made, and a run takes as many
upload slots as the blocks it may carry."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.net.types import BUSY_HEADER
from peerdistd.proto import pccrr, pccrr_client
from peerdistd.proto.pccrr import Blk

SEG = bytes(range(32))
KP = bytes(range(100, 132))
BLOCKS = {i: bytes([i + 1]) * 65536 for i in range(8)}
GUARD = 10.0  # seconds a gate waits at most: a test never hangs on a broken server


class GatedSource:
    """A block source whose run reads wait for the test to open the gate."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.opened_in_time: list[bool] = []
        self.run_threads: list[threading.Thread] = []

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return sorted(BLOCKS) if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return BLOCKS.get(index) if segment_id == SEG else None

    def read_run(self, segment_id: bytes, first: int, count: int) -> tuple[list[bytes], int]:
        self.run_threads.append(threading.current_thread())
        self.entered.set()
        self.opened_in_time.append(self.gate.wait(GUARD))
        run = [BLOCKS[i] for i in range(first, min(first + count, len(BLOCKS)))]
        return run, 0


@pytest.fixture
async def served() -> AsyncIterator[tuple[RetrievalServer, GatedSource]]:
    source = GatedSource()
    async with RetrievalServer(source, "127.0.0.1", 0) as srv:
        yield srv, source


def http_post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return await reader.readexactly(length)


def run_blocks(body: bytes, first: int, count: int) -> list[int]:
    answers = pccrr_client.split_run(body, SEG, first, count, busy=False)
    return [a.block_index if isinstance(a, Blk) else -1 for a in answers]


async def test_a_run_is_made_off_the_event_loop_while_other_peers_are_answered(
    served: tuple[RetrievalServer, GatedSource],
) -> None:
    srv, source = served
    base = f"http://127.0.0.1:{srv.port}"
    async with aiohttp.ClientSession() as http:
        run = asyncio.ensure_future(
            http.post(base + pccrr.RUN_PATH, data=pccrr_client.block_run_request(SEG, 0, 4))
        )
        assert await asyncio.to_thread(source.entered.wait, GUARD)
        # The run is being made; another peer's one-block request is answered meanwhile.
        async with http.post(base + pccrr.MAGIC_PATH, data=pccrr_client.block_request(SEG, 5)) as r:
            one = pccrr.parse_response(await r.read())
        assert isinstance(one, Blk) and one.block_index == 5
        source.gate.set()
        async with await run as r:
            assert run_blocks(await r.read(), 0, 4) == [0, 1, 2, 3]
    assert source.opened_in_time == [True]
    assert source.run_threads[0] is not threading.main_thread()


async def test_requests_pipelined_behind_a_run_are_answered_after_it_in_order(
    served: tuple[RetrievalServer, GatedSource],
) -> None:
    srv, source = served
    source.gate.set()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(
            http_post(pccrr.RUN_PATH, pccrr_client.block_run_request(SEG, 0, 3))
            + http_post(pccrr.MAGIC_PATH, pccrr_client.block_request(SEG, 6))
            + http_post(pccrr.RUN_PATH, pccrr_client.block_run_request(SEG, 4, 2))
        )
        assert run_blocks(await read_answer(reader), 0, 3) == [0, 1, 2]
        one = pccrr.parse_response(await read_answer(reader))
        assert isinstance(one, Blk) and one.block_index == 6
        assert run_blocks(await read_answer(reader), 4, 2) == [4, 5]
    finally:
        writer.close()
    assert srv.active_uploads == 0


async def test_a_peer_gone_while_its_run_is_made_frees_its_slot(
    served: tuple[RetrievalServer, GatedSource],
) -> None:
    srv, source = served
    _reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(http_post(pccrr.RUN_PATH, pccrr_client.block_run_request(SEG, 0, 4)))
    assert await asyncio.to_thread(source.entered.wait, GUARD)
    assert srv.active_uploads == pccrr.RUN_LIMIT  # a run holds the slots of its blocks
    writer.transport.abort()  # the peer resets the connection
    source.gate.set()  # the run is made for nobody: its answer cannot be written
    await asyncio.wait_for(srv.wait_uploads(0), GUARD)
    # The server goes on serving: a new connection gets its run.
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{srv.port}{pccrr.RUN_PATH}"
        async with http.post(url, data=pccrr_client.block_run_request(SEG, 2, 2)) as r:
            assert run_blocks(await r.read(), 2, 2) == [2, 3]
    assert srv.active_uploads == 0


async def test_a_run_takes_the_upload_slots_of_its_blocks_and_is_answered_busy_past_them() -> None:
    # Counted as one upload, 64 runs (64 MiB) could be under way at a peer at once; on a
    # loaded host the last came after the askers' timers and honest peers were banned.
    source = GatedSource()
    async with (
        RetrievalServer(source, "127.0.0.1", 0, upload_limit=2 * pccrr.RUN_LIMIT + 8) as srv,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{srv.port}"

        async def run(first: int) -> tuple[bool, bytes]:
            body = pccrr_client.block_run_request(SEG, first, 2)
            async with http.post(base + pccrr.RUN_PATH, data=body) as r:
                return BUSY_HEADER in r.headers, await r.read()

        made = [asyncio.ensure_future(run(first)) for first in (0, 2)]
        await asyncio.wait_for(srv.wait_uploads(2 * pccrr.RUN_LIMIT), GUARD)
        # A third run does not fit in the slots left: busy at once, while the two are made.
        busy, body = await asyncio.wait_for(run(4), GUARD)
        assert busy and run_blocks(body, 4, 2)[0] == -1
        # A one-block request (a Windows or iPXE peer's) still fits.
        async with http.post(base + pccrr.MAGIC_PATH, data=pccrr_client.block_request(SEG, 6)) as r:
            assert BUSY_HEADER not in r.headers
            one = pccrr.parse_response(await r.read())
        assert isinstance(one, Blk) and one.block_index == 6
        source.gate.set()
        (busy0, body0), (busy1, body1) = [await m for m in made]
        assert not busy0 and run_blocks(body0, 0, 2) == [0, 1]
        assert not busy1 and run_blocks(body1, 2, 2) == [2, 3]
    assert srv.active_uploads == 0


async def test_run_heads_sent_slowly_hold_one_slot_each_not_a_runs_worth() -> None:
    # An attacker (or a slow link) sends the heads of run requests and never the bodies:
    # were a run's 16 slots taken with its head, four such connections would make the node
    # answer every Windows or iPXE peer busy until the upload timer ran out.
    source = GatedSource()
    async with RetrievalServer(source, "127.0.0.1", 0) as srv:  # 64 slots, as on Windows
        body = pccrr_client.block_run_request(SEG, 0, 4)
        conns = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(4)]
        try:
            for _, writer in conns:
                writer.write(http_post(pccrr.RUN_PATH, body)[:-1])  # all but the last byte
            await asyncio.wait_for(srv.wait_uploads(4), GUARD)
            async with aiohttp.ClientSession() as http:
                url = f"http://127.0.0.1:{srv.port}{pccrr.MAGIC_PATH}"
                async with http.post(url, data=pccrr_client.block_request(SEG, 6)) as r:
                    assert BUSY_HEADER not in r.headers
                    one = pccrr.parse_response(await r.read())
            assert isinstance(one, Blk) and one.block_index == 6
        finally:
            for _, writer in conns:
                writer.close()
        await asyncio.wait_for(srv.wait_uploads(0), GUARD)
