"""The fetch loop: stream-read from a fake daemon, missing ranges from a real loopback origin."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
import pytest
from aiohttp import web

from peerdistd.api import fetch_loop
from peerdistd.api.client import PeerDistClient
from peerdistd.cli.fetching import FetchSummary, fetch
from peerdistd.errors import RemoteError

BLOCK = 4096
CONTENT = bytes((i * 7 + i // 251) % 256 for i in range(12 * BLOCK - 100))


class ContentDaemon:
    """Just enough of the v1 read semantics (DESIGN.md, "Read semantics") to drive fetch()."""

    def __init__(self, content: bytes, local: set[int], peers: set[int]) -> None:
        self.content = content
        self.local = set(local)
        self.peers = set(peers)
        self.offset = 0
        self.have = bytearray(len(content))  # 1 where added data was verified
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.on_add: Callable[[], None] = lambda: None  # e.g. other nodes fetched meanwhile
        self.piece = 0  # > 0: MISSING_DATA of a block read stops at the next multiple of it
        # Blocks another node is fetching: a block read there ends with TIMEOUT (its wait for
        # that node ran out), and then calls on_busy.
        self.busy: set[int] = set()
        self.on_busy: Callable[[], None] = lambda: None

    def _run(self, blocks: set[int], start: int) -> int:
        """End offset of the run of ``blocks`` starting at ``start``'s block."""
        b = start // BLOCK
        while b in blocks and b * BLOCK < len(self.content):
            b += 1
        return min(b * BLOCK, len(self.content))

    def _missing_end(self, start: int) -> int:
        b = start // BLOCK
        while b * BLOCK < len(self.content) and b not in self.local | self.peers:
            b += 1
        return min(b * BLOCK, len(self.content))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        tail = request.path.removeprefix("/v1/contents").removeprefix("/h")
        self.calls.append((f"{request.method} {tail or '/'}", dict(request.query)))
        size = len(self.content)
        if request.method == "POST" and tail == "":
            assert await request.read() == b"CI"
            state = {"handle": "h", "complete": True, "version": 1, "size": size}
            return web.json_response({**state, "range": {"offset": 0, "length": size}}, status=201)
        if tail == "/stream-read":
            want = int(request.query["max"])
            start = self.offset
            if start >= size:
                return web.json_response({"error": "NO_MORE", "message": ""}, status=416)
            source = self.local if start // BLOCK in self.local else self.peers
            end = min(start + want, self._run(source, start))
            if end == start:
                end = self._missing_end(start)
                self.offset = end
                body = {"error": "MISSING_DATA", "message": "", "offset": start}
                return web.json_response({**body, "length": end - start}, status=424)
            self.offset = end
            peers = 0 if source is self.local else end - start
            self.local |= {b for b in range(start // BLOCK, (end - 1) // BLOCK + 1)}
            headers = {
                "PeerDist-Offset": str(start),
                "PeerDist-Read-Id": "r",
                "PeerDist-From-Peers": str(peers),
            }
            return web.Response(body=self.content[start:end], headers=headers)
        if tail == "/block-read":
            start, want = int(request.query["offset"]), int(request.query["max"])
            if start // BLOCK in self.busy:
                self.on_busy()
                body = {"error": "TIMEOUT", "message": "", "offset": start}
                return web.json_response({**body, "length": BLOCK}, status=504)
            source = self.local if start // BLOCK in self.local else self.peers
            end = min(start + want, self._run(source, start))
            if end == start:
                body = {"error": "MISSING_DATA", "message": "", "offset": start}
                gap_end = self._missing_end(start)
                if self.piece:  # single flight: exactly the piece the node claimed
                    gap_end = min(gap_end, (start // self.piece + 1) * self.piece)
                return web.json_response({**body, "length": gap_end - start}, status=424)
            peers = 0 if source is self.local else end - start
            headers = {"PeerDist-Offset": str(start), "PeerDist-From-Peers": str(peers)}
            return web.Response(body=self.content[start:end], headers=headers)
        if tail == "/data":
            start = int(request.query["offset"])
            added = await request.read()
            if self.content[start : start + len(added)] != added:
                return web.json_response({"error": "INVALID_DATA", "message": ""}, status=422)
            self.have[start : start + len(added)] = b"\x01" * len(added)
            self.local |= {b for b in range(start // BLOCK, (start + len(added)) // BLOCK)}
            self.on_add()
            result = {"offset": start, "length": len(added), "verified": len(added), "held": 0}
            return web.json_response(result)
        return web.Response(status=204)  # flush, close


@dataclass
class Origin:
    """An origin server: answers Range requests, or misbehaves as ``mode`` says."""

    content: bytes
    mode: str = "ok"
    requests: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.headers))
        first, last = (int(x) for x in request.headers["Range"].removeprefix("bytes=").split("-"))
        body = self.content[first : last + 1]
        if self.mode == "ignore-range":
            return web.Response(body=self.content)
        if self.mode == "short":
            body = body[:-1]
            last -= 1
        if self.mode == "bad-range":
            first += 1
        headers = {"Content-Range": f"bytes {first}-{last}/{len(self.content)}"}
        return web.Response(status=206, body=body, headers=headers)


@dataclass
class Streamed:
    """An origin whose answers a test writes itself, piece by piece (see :func:`partial`)."""

    handle: Callable[[web.Request], Awaitable[web.StreamResponse]]


async def partial(request: web.Request) -> tuple[web.StreamResponse, int, bytes]:
    """A prepared 206 answer to ``request``'s Range: the answer, its first byte, its body."""
    first, last = (int(x) for x in request.headers["Range"][6:].split("-"))
    resp = web.StreamResponse(
        status=206, headers={"Content-Range": f"bytes {first}-{last}/{len(CONTENT)}"}
    )
    body = CONTENT[first : last + 1]
    resp.content_length = len(body)
    await resp.prepare(request)
    return resp, first, body


@contextlib.asynccontextmanager
async def servers(
    daemon: ContentDaemon, origin: Origin | Streamed
) -> AsyncIterator[tuple[PeerDistClient, str]]:
    api = web.Application()
    api.router.add_route("*", "/{tail:.*}", daemon.handle)
    web_origin = web.Application()
    web_origin.router.add_get("/file.bin", origin.handle)
    runners = [web.AppRunner(api), web.AppRunner(web_origin)]
    for runner in runners:
        await runner.setup()
    folder = tempfile.mkdtemp(prefix="pdf", dir="/tmp")
    try:
        await web.UnixSite(runners[0], f"{folder}/api.sock").start()
        await web.TCPSite(runners[1], "127.0.0.1", 0).start()
        port = runners[1].addresses[0][1]
        async with PeerDistClient(f"{folder}/api.sock") as client:
            yield client, f"http://127.0.0.1:{port}/file.bin"
    finally:
        for runner in runners:
            await runner.cleanup()
        shutil.rmtree(folder)


async def run_loop(
    daemon: ContentDaemon, origin: Origin | Streamed, out: IO[bytes], **options: Any
) -> fetch_loop.FetchCounts:
    """The fetch loop over ``daemon`` and ``origin`` into ``out``, with ``options``."""
    async with servers(daemon, origin) as (client, url):
        handle = await client.open_content(b"CI")
        async with handle, aiohttp.ClientSession() as session:
            return await fetch_loop.fetch_loop(handle, url, out, session=session, **options)


async def run_one_worker(
    daemon: ContentDaemon, origin: Origin | Streamed, out: IO[bytes], **options: Any
) -> fetch_loop.FetchCounts:
    """:func:`run_loop` with one worker that starts at the first of six-block pieces."""
    return await run_loop(
        daemon,
        origin,
        out,
        workers=1,
        piece_bounds=range(0, len(CONTENT), 6 * BLOCK),
        first_piece=lambda count: 0,
        **options,
    )


async def test_fetch_takes_cache_then_peers_then_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    # Chunks that do not fall on block boundaries: the daemon holds partial blocks.
    monkeypatch.setattr(fetch_loop, "ADD_CHUNK", 5000)
    daemon = ContentDaemon(CONTENT, local={0, 1, 8}, peers={2, 3, 4})
    origin = Origin(CONTENT)
    out = io.BytesIO()
    seen: list[tuple[int, int | None]] = []
    async with servers(daemon, origin) as (client, url):
        summary = await fetch(
            client, b"CI", url, out, timeout_ms=250, progress=lambda d, t: seen.append((d, t))
        )
    assert out.getvalue() == CONTENT
    assert summary == FetchSummary(
        size=len(CONTENT),
        from_cache=3 * BLOCK,
        from_peers=3 * BLOCK,
        from_origin=len(CONTENT) - 6 * BLOCK,
        origin_requests=2,
        seconds=summary.seconds,
    )
    assert [r["Range"] for r in origin.requests] == [
        f"bytes={5 * BLOCK}-{8 * BLOCK - 1}",
        f"bytes={9 * BLOCK}-{len(CONTENT) - 1}",
    ]
    for headers in origin.requests:
        # [MS-PCCRTP] 2.2: a missing-data request, never with Accept-Encoding: peerdist.
        assert headers["X-P2P-PeerDist"] == "Version=1.1, MissingDataRequest=true"
        assert headers["Accept-Encoding"] == "identity"
    assert bytes(daemon.have[5 * BLOCK : 8 * BLOCK]) == b"\x01" * 3 * BLOCK
    assert bytes(daemon.have[9 * BLOCK :]) == b"\x01" * (len(CONTENT) - 9 * BLOCK)
    assert seen[-1] == (len(CONTENT), len(CONTENT))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    reads = [q for call, q in daemon.calls if call == "POST /block-read"]
    assert all(q["timeout_ms"] == "250" and q["max"] != "0" for q in reads)
    # The loop never flushes: ClientFlushContent would drop what it just fetched.
    assert "POST /flush" not in [call for call, _ in daemon.calls]
    assert daemon.calls[-1][0] == "DELETE /"


async def test_a_long_gap_goes_to_the_origin_a_piece_at_a_time() -> None:
    """Nodes that start together: the daemon names one piece at a time (single flight), and
    what a neighbour fetched meanwhile comes from peers."""
    daemon = ContentDaemon(CONTENT, local=set(), peers=set())
    daemon.piece = 2 * BLOCK
    # Once this node has added its first slice, a neighbour holds blocks 4 and up.
    daemon.on_add = lambda: daemon.peers.update(range(4, 12))
    origin = Origin(CONTENT)
    out = io.BytesIO()
    async with servers(daemon, origin) as (client, url):
        summary = await fetch(client, b"CI", url, out)
    assert out.getvalue() == CONTENT
    assert [r["Range"] for r in origin.requests] == [
        f"bytes=0-{2 * BLOCK - 1}",
        f"bytes={2 * BLOCK}-{4 * BLOCK - 1}",
    ]
    assert (summary.from_origin, summary.from_peers) == (4 * BLOCK, len(CONTENT) - 4 * BLOCK)


async def test_fetch_from_cache_only_asks_no_origin() -> None:
    daemon = ContentDaemon(CONTENT, local=set(range(12)), peers=set())
    origin = Origin(CONTENT)
    out = io.BytesIO()
    async with servers(daemon, origin) as (client, url):
        summary = await fetch(client, b"CI", url, out, read_max=10000)
    assert out.getvalue() == CONTENT
    assert (summary.from_cache, summary.from_peers, summary.from_origin) == (len(CONTENT), 0, 0)
    assert origin.requests == []
    assert "POST /flush" not in [call for call, _ in daemon.calls]


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("ignore-range", "HTTP 200 OK, expected 206"),
        ("bad-range", "answered Content-Range 'bytes 1-"),
        ("short", "answered Content-Range"),
    ],
)
async def test_origin_that_breaks_range_rules_fails_the_fetch(mode: str, message: str) -> None:
    daemon = ContentDaemon(CONTENT, local=set(), peers=set())
    async with servers(daemon, Origin(CONTENT, mode)) as (client, url):
        with pytest.raises(RemoteError, match=message):
            await fetch(client, b"CI", url, io.BytesIO())
    assert daemon.calls[-1][0] == "DELETE /"  # the handle is closed on the way out
    assert not any(daemon.have)


async def test_origin_body_shorter_than_its_range_is_refused() -> None:
    async def liar(request: web.Request) -> web.StreamResponse:
        # Claims the whole range but sends one byte less: caught by the length check.
        first, last = (int(x) for x in request.headers["Range"].removeprefix("bytes=").split("-"))
        resp = web.StreamResponse(status=206)
        resp.headers["Content-Range"] = f"bytes {first}-{last}/{len(CONTENT)}"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(CONTENT[first:last])
        await resp.write_eof()
        return resp

    daemon = ContentDaemon(CONTENT, local=set(range(11)), peers=set())
    origin = Origin(CONTENT)
    origin.handle = liar  # type: ignore[method-assign]
    out = io.BytesIO()
    async with servers(daemon, origin) as (client, url):
        with pytest.raises(RemoteError, match="wrong length"):
            await fetch(client, b"CI", url, out)
    assert out.getvalue() == CONTENT[: 11 * BLOCK]  # nothing of the bad range is written


async def test_unreachable_origin_is_a_remote_error() -> None:
    daemon = ContentDaemon(CONTENT, local=set(), peers=set())
    async with servers(daemon, Origin(CONTENT)) as (client, _):
        with pytest.raises(RemoteError, match=r"origin http://127\.0\.0\.1:1/x \(bytes 0-"):
            await fetch(client, b"CI", "http://127.0.0.1:1/x", io.BytesIO())


def test_fetch_summary_is_frozen() -> None:
    summary = FetchSummary(1, 1, 0, 0, 0, 0.1)
    with pytest.raises(AttributeError):
        summary.size = 2  # type: ignore[misc]


class Pipe(io.RawIOBase):
    """An output that cannot seek (stdout): bytes must arrive in order."""

    def __init__(self) -> None:
        self.got = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.got += data
        return len(data)


async def test_workers_fetch_pieces_in_parallel_and_write_in_order() -> None:
    """Four workers over 2-block pieces: every piece from the origin once, output in order."""
    daemon = ContentDaemon(CONTENT, local={3}, peers={7, 8})
    daemon.piece = 2 * BLOCK
    origin = Origin(CONTENT)
    out = Pipe()
    counts = await run_loop(
        daemon,
        origin,
        out,  # type: ignore[arg-type]
        workers=4,
        piece_bounds=range(0, len(CONTENT), 2 * BLOCK),
    )
    assert bytes(out.got) == CONTENT
    assert (counts.from_cache, counts.from_peers) == (BLOCK, 2 * BLOCK)
    assert counts.from_origin == len(CONTENT) - 3 * BLOCK
    asked = sorted(
        tuple(int(x) for x in r["Range"].removeprefix("bytes=").split("-")) for r in origin.requests
    )
    # Each missing block exactly once, never past its piece.
    assert asked == [
        (0, 2 * BLOCK - 1),
        (2 * BLOCK, 3 * BLOCK - 1),
        (4 * BLOCK, 6 * BLOCK - 1),
        (6 * BLOCK, 7 * BLOCK - 1),
        (9 * BLOCK, 10 * BLOCK - 1),
        (10 * BLOCK, len(CONTENT) - 1),
    ]


async def test_a_worker_reads_its_next_piece_as_its_origin_range_nears_its_end() -> None:
    """One worker, every piece missing. The read that finds piece 2 missing is made while
    piece 1 still comes from the origin, once its rest is due within about two reads' time
    (a read that reports MISSING_DATA may take a discovery round and a claim window, which
    the origin connection spent idle), not while most of it is to come: that read claims
    piece 2, and the claim must see progress soon. One origin range at a time."""
    daemon = ContentDaemon(CONTENT, local=set(), peers=set())
    daemon.piece = 6 * BLOCK
    second_read = asyncio.Event()
    answer = daemon.handle

    async def handle(request: web.Request) -> web.StreamResponse:
        # The worker's read, which may claim (a peer reader's no_claim read claims nothing).
        claims = "no_claim" not in request.query.get("flags", "")
        at = request.query.get("offset") == str(6 * BLOCK)
        if request.path.endswith("/block-read") and at and claims:
            second_read.set()
        return await answer(request)

    daemon.handle = handle  # type: ignore[method-assign]
    seen: dict[str, bool] = {}
    serving = 0

    async def origin(request: web.Request) -> web.StreamResponse:
        nonlocal serving
        serving += 1
        try:
            assert serving == 1  # one origin range at a time per worker
            resp, first, body = await partial(request)
            if first == 0:
                await resp.write(body[:1])  # most of the range still to come
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(second_read.wait(), 0.3)
                seen["early"] = second_read.is_set()
                await resp.write(body[1:-1])  # now its rest is one byte
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(second_read.wait(), 5.0)
                seen["near_end"] = second_read.is_set()
                body = body[-1:]
            await resp.write(body)
            await resp.write_eof()
            return resp
        finally:
            serving -= 1

    out = io.BytesIO()
    counts = await run_one_worker(daemon, Streamed(origin), out)
    assert out.getvalue() == CONTENT and counts.from_origin == len(CONTENT)
    assert seen == {"early": False, "near_end": True}


async def test_a_seekable_output_starts_at_a_random_piece_and_wraps_around(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nodes that start together begin at different pieces, so each claims and fetches its
    own stretch from the origin (started all at the first, one node stayed ahead and fetched
    every piece). Output that cannot seek starts at the first piece (the test above)."""
    picked: list[int] = []

    def pick(count: int) -> int:
        picked.append(count)
        return 4

    monkeypatch.setattr(fetch_loop, "_random_piece", pick)
    daemon = ContentDaemon(CONTENT, local=set(), peers=set())
    daemon.piece = 2 * BLOCK
    origin = Origin(CONTENT)
    out = io.BytesIO()
    counts = await run_loop(
        daemon, origin, out, workers=1, piece_bounds=range(0, len(CONTENT), 2 * BLOCK)
    )
    assert out.getvalue() == CONTENT and counts.from_origin == len(CONTENT)
    assert picked == [6]  # six pieces of two blocks
    asked = [int(r["Range"][6:].split("-")[0]) // BLOCK for r in origin.requests]
    assert asked == [8, 10, 0, 2, 4, 6]  # from the fifth piece, wrapping around, each once


async def test_a_slow_range_adds_its_whole_blocks_before_add_chunk_is_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A range coming slowly is added a whole block at a time at least every PROGRESS_EVERY
    seconds, not only per ADD_CHUNK: the daemon's claim of the piece must see progress
    within its ttl, else it is given up and the piece fetched twice."""
    monkeypatch.setattr(fetch_loop, "PROGRESS_EVERY", 0.05)
    daemon = ContentDaemon(CONTENT, local=set(), peers=set())
    added = asyncio.Event()
    daemon.on_add = added.set
    seen: list[bool] = []

    async def origin(request: web.Request) -> web.StreamResponse:
        resp, _, body = await partial(request)
        await resp.write(body[: 2 * BLOCK])
        await asyncio.sleep(0.1)  # a slow link: time passes before the next bytes
        await resp.write(body[2 * BLOCK : 2 * BLOCK + 1])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(added.wait(), 5.0)
        seen.append(added.is_set())  # two whole blocks were added meanwhile
        await resp.write(body[2 * BLOCK + 1 :])
        await resp.write_eof()
        return resp

    out = io.BytesIO()
    await run_loop(
        daemon, Streamed(origin), out, workers=1, block_bounds=range(0, len(CONTENT), BLOCK)
    )
    assert out.getvalue() == CONTENT
    assert seen == [True]
    # The first add was exactly the two whole blocks that had come.
    adds = [int(q["offset"]) for call, q in daemon.calls if call == "PUT /data"]
    assert adds[:2] == [0, 2 * BLOCK]


async def test_a_peer_reader_reads_what_peers_hold_while_the_worker_fetches_from_the_origin() -> (
    None
):
    """One worker, fetching piece 0 from the origin; piece 1 is held by peers. A peer reader
    reads piece 1 while piece 0 is still coming (the worker alone would read it only as its
    origin range nears its end: on a shared WAN most of a piece's time), with the no_claim
    flag and a short wait."""
    daemon = ContentDaemon(CONTENT, local=set(), peers=set(range(6, 12)))
    daemon.piece = 6 * BLOCK
    peer_read = asyncio.Event()
    answer = daemon.handle

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/block-read") and request.query["offset"] == str(6 * BLOCK):
            peer_read.set()
        return await answer(request)

    daemon.handle = handle  # type: ignore[method-assign]
    seen: dict[str, bool] = {}

    async def origin(request: web.Request) -> web.StreamResponse:
        resp, first, body = await partial(request)
        assert first == 0
        await resp.write(body[:1])  # most of the range still to come
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer_read.wait(), 5.0)
        seen["read_meanwhile"] = peer_read.is_set()
        await resp.write(body[1:])
        await resp.write_eof()
        return resp

    out = io.BytesIO()
    counts = await run_one_worker(daemon, Streamed(origin), out, readers=1)
    assert out.getvalue() == CONTENT
    assert seen == {"read_meanwhile": True}
    assert (counts.from_origin, counts.from_peers) == (6 * BLOCK, len(CONTENT) - 6 * BLOCK)
    reads = [q for call, q in daemon.calls if call == "POST /block-read"]
    by_reader = [q for q in reads if q.get("flags") == "no_claim"]
    assert by_reader and all(q["timeout_ms"] == str(fetch_loop.READER_WAIT_MS) for q in by_reader)


async def test_a_piece_another_node_fetches_is_given_back_and_read_again_not_fetched() -> None:
    """A peer reader's wait for a piece another node is fetching runs out (TIMEOUT): it gives
    the piece back and goes on; the piece is read again once that node has it, and this node
    never asks the origin for it."""
    daemon = ContentDaemon(CONTENT, local=set(), peers=set())
    daemon.piece = 6 * BLOCK
    daemon.busy = set(range(6, 12))

    def other_node_done() -> None:
        daemon.busy.clear()
        daemon.peers.update(range(6, 12))

    daemon.on_busy = other_node_done
    origin = Origin(CONTENT)
    out = io.BytesIO()
    counts = await run_one_worker(daemon, origin, out, readers=1)
    assert out.getvalue() == CONTENT
    assert [r["Range"] for r in origin.requests] == [f"bytes=0-{6 * BLOCK - 1}"]
    assert (counts.from_origin, counts.from_peers) == (6 * BLOCK, len(CONTENT) - 6 * BLOCK)
    at_piece_1 = [
        q.get("flags", "")
        for call, q in daemon.calls
        if call == "POST /block-read" and q["offset"] == str(6 * BLOCK)
    ]
    assert at_piece_1[0] == "no_claim" and len(at_piece_1) == 2  # timed out, then read


async def test_an_output_that_cannot_seek_has_no_peer_readers() -> None:
    """In order, a range given back would hold up everything written after it."""
    daemon = ContentDaemon(CONTENT, local=set(), peers=set(range(12)))

    class Pipe(io.BytesIO):
        def seekable(self) -> bool:
            return False

    out = Pipe()
    await run_loop(daemon, Origin(CONTENT), out, readers=2)
    assert out.getvalue() == CONTENT
    reads = [q for call, q in daemon.calls if call == "POST /block-read"]
    assert reads and not any("flags" in q for q in reads)
