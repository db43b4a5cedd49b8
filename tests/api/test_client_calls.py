"""The client SDK against a scripted fake daemon on a Unix socket: requests sent, answers parsed."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from peerdistd.api.client import (
    AddDataResult,
    CacheUsage,
    Event,
    Peer,
    PeerDistClient,
    Publication,
    ReadResult,
)
from peerdistd.errors import InvalidParameter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUB = {
    "id": "abc",
    "size": 5,
    "version": 2,
    "algorithm": "sha512",
    "segments": 1,
    "created": 1700000000.5,
}
STATE = {
    "handle": "h/1",
    "complete": True,
    "version": 1,
    "range": {"offset": 65536, "length": 1000},
    "size": 1000,
}
STATUS = {
    "status": "AVAILABLE",
    "version": "0.1.0",
    "node_id": "n1",
    "uptime": 12.5,
    "cache": {"bytes_used": 10, "limit_bytes": 100, "segments": 1, "blocks": 2, "evictions": 0},
    "counters": {"bytes_from_cache": 7, "cache_hits": 3},
    "peers": [{"node_id": "n2", "address": "127.0.0.2:54321", "last_seen": 1700000000}],
    "listen": {"socket": "/run/x.sock", "peers": None},
}


@dataclass
class Seen:
    method: str
    raw_path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class FakeDaemon:
    """Answers each (method, path) with a scripted handler and records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.seen: list[Seen] = []

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.routes[(method, path)] = handler

    def reply(self, method: str, path: str, obj: Any = None, status: int = 200) -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            if obj is None:
                return web.Response(status=status)
            return web.json_response(obj, status=status)

        self.on(method, path, handler)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append(
            Seen(
                request.method,
                request.raw_path.split("?")[0],
                dict(request.query),
                dict(request.headers),
                body,
            )
        )
        return await self.routes[(request.method, request.path)](request)


@contextlib.asynccontextmanager
async def serve_unix(fake: FakeDaemon) -> AsyncIterator[Path]:
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    folder = tempfile.mkdtemp(prefix="pdc", dir="/tmp")  # short: sun_path has 108 bytes
    path = Path(folder) / "api.sock"
    try:
        await web.UnixSite(runner, str(path)).start()
        yield path
    finally:
        await runner.cleanup()
        shutil.rmtree(folder)


@pytest.fixture
def fake() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
async def client(fake: FakeDaemon) -> AsyncIterator[PeerDistClient]:
    async with serve_unix(fake) as path, PeerDistClient(path) as c:
        yield c


async def test_status_is_parsed_into_values(fake: FakeDaemon, client: PeerDistClient) -> None:
    fake.reply("GET", "/v1/status", STATUS)
    status = await client.status()
    assert status.status == "AVAILABLE"
    assert status.uptime == 12.5
    assert status.cache == CacheUsage(10, 100, 1, 2, 0)
    assert status.counter("bytes_from_cache") == 7
    assert status.counter("bytes_from_peers") == 0
    assert status.peers == (Peer("n2", "127.0.0.2:54321", 1700000000.0, None),)
    assert status.listen.socket == "/run/x.sock"
    assert status.listen.peers is None


async def test_publish_bytes_sends_params_and_body(
    fake: FakeDaemon, client: PeerDistClient
) -> None:
    fake.reply("POST", "/v1/publications", {**PUB, "created": "2023-11-14T22:13:20.5+00:00"}, 201)
    pub = await client.publish(b"hello", id="abc", version=2, hash="sha512")
    assert pub == Publication("abc", 5, 2, "sha512", 1, 1700000000.5)
    (seen,) = fake.seen
    assert seen.query == {"id": "abc", "version": "2", "hash": "sha512"}
    assert seen.body == b"hello"
    assert seen.headers["Content-Type"] == "application/octet-stream"


async def test_publish_streams_a_file_and_an_async_iterable(
    fake: FakeDaemon, client: PeerDistClient, tmp_path: Path
) -> None:
    fake.reply("POST", "/v1/publications", PUB, 201)
    content = bytes(range(256)) * 9000  # more than one upload chunk
    path = tmp_path / "f.bin"
    path.write_bytes(content)
    await client.publish(path)

    async def parts() -> AsyncIterator[bytes]:
        yield b"ab"
        yield b"cd"

    await client.publish(parts())
    assert [s.body for s in fake.seen] == [content, b"abcd"]
    assert fake.seen[0].query == {"version": "1", "hash": "sha256"}


async def test_publish_of_a_missing_file_sends_nothing(
    fake: FakeDaemon, client: PeerDistClient, tmp_path: Path
) -> None:
    with pytest.raises(InvalidParameter, match="cannot read"):
        await client.publish(tmp_path / "absent")
    assert fake.seen == []


async def test_publication_routes_encode_ids(fake: FakeDaemon, client: PeerDistClient) -> None:
    fake.reply("GET", "/v1/publications", {"publications": [PUB]})
    fake.reply("GET", "/v1/publications/a/b", PUB)
    fake.reply("DELETE", "/v1/publications/a/b", None, 204)

    async def ci(request: web.Request) -> web.Response:
        return web.Response(body=b"\x01\x00CI", content_type="application/octet-stream")

    fake.on("GET", "/v1/publications/a/b/content-information", ci)
    assert [p.id for p in await client.publications()] == ["abc"]
    assert (await client.publication("a/b")).size == 5
    assert await client.content_information("a/b", offset=0, length=65536) == b"\x01\x00CI"
    await client.unpublish("a/b")
    assert [s.raw_path for s in fake.seen[1:]] == [
        "/v1/publications/a%2Fb",
        "/v1/publications/a%2Fb/content-information",
        "/v1/publications/a%2Fb",
    ]
    assert fake.seen[2].query == {"offset": "0", "length": "65536"}


async def test_content_handle_calls(fake: FakeDaemon, client: PeerDistClient) -> None:
    base = "/v1/contents/h/1"
    fake.reply("POST", "/v1/contents", {**STATE, "complete": False, "size": None}, 201)
    fake.reply("POST", base + "/content-information", {**STATE, "complete": False})
    fake.reply("POST", base + "/content-information/complete", STATE)
    fake.reply("PUT", base + "/data", {"offset": 65536, "length": 3, "verified": 0, "held": 3})
    fake.reply("POST", base + "/flush", None, 204)
    fake.reply("DELETE", base, None, 204)

    async def read(request: web.Request) -> web.Response:
        if request.query["max"] == "0":
            return web.Response(headers={"PeerDist-Available": "4096"})
        headers = {"PeerDist-Offset": "65536", "PeerDist-Read-Id": "r7"}
        return web.Response(body=b"data", headers=headers)

    fake.on("POST", base + "/stream-read", read)
    fake.on("POST", base + "/block-read", read)

    handle = await client.open_content(b"CI-part-1", immediate=True)
    async with handle:
        assert (handle.handle, handle.complete, handle.size) == ("h/1", False, None)
        await handle.add_content_information(b"CI-part-2")
        await handle.complete_content_information()
        assert (handle.complete, handle.size, handle.range_offset) == (True, 1000, 65536)
        assert await handle.available() == 4096
        got = await handle.stream_read(4, timeout_ms=0, flags=["fail_blocked", "shutdown_on_fail"])
        assert got == ReadResult(65536, b"data", "r7")
        await handle.block_read(70000)
        added = await handle.add_data(65536, b"xyz")
        assert added == AddDataResult(65536, 3, 0, 3)
        await handle.flush()
    await handle.close()  # already closed: sends nothing
    assert [
        (s.method, s.raw_path.removeprefix("/v1/contents/h%2F1") or "/") for s in fake.seen
    ] == [
        ("POST", "/v1/contents"),
        ("POST", "/content-information"),
        ("POST", "/content-information/complete"),
        ("POST", "/stream-read"),
        ("POST", "/stream-read"),
        ("POST", "/block-read"),
        ("PUT", "/data"),
        ("POST", "/flush"),
        ("DELETE", "/"),
    ]
    queries = [s.query for s in fake.seen]
    assert queries[0] == {"flags": "immediate"}
    assert queries[3] == {"max": "0"}
    assert queries[4] == {"max": "4", "timeout_ms": "0", "flags": "fail_blocked,shutdown_on_fail"}
    assert queries[5] == {"offset": "70000", "max": str(1 << 20)}
    assert queries[6] == {"offset": "65536"}
    assert [fake.seen[i].body for i in (0, 1, 6)] == [b"CI-part-1", b"CI-part-2", b"xyz"]


async def test_unknown_read_flag_is_refused_locally(
    fake: FakeDaemon, client: PeerDistClient
) -> None:
    fake.reply("POST", "/v1/contents", STATE, 201)
    handle = await client.open_content(b"CI")
    with pytest.raises(InvalidParameter, match="bogus"):
        await handle.stream_read(flags=["bogus"])
    assert len(fake.seen) == 1


async def test_events_parse_server_sent_events(fake: FakeDaemon, client: PeerDistClient) -> None:
    async def events(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b': a comment\n\nevent: STATUS_CHANGED\ndata: {"status": "AVAILABLE"}\n\n')
        await resp.write(
            b'event: START_COMPLETE\r\ndata: {"handle": "h1",\r\ndata: "read_id": "r1"'
        )
        await resp.write(b', "status": "OK", "peer_accepted": false}\r\n\r\n')
        await resp.write(b'event: PEER_ACCEPTED\ndata: {"handle": "h1", "read_id": "r2"}\n\n')
        return resp

    fake.on("GET", "/v1/events", events)
    got: list[Event] = []
    async for event in client.events():
        got.append(event)
        if len(got) == 2:
            break
    assert got == [
        Event("STATUS_CHANGED", {"status": "AVAILABLE"}),
        Event(
            "START_COMPLETE",
            {"handle": "h1", "read_id": "r1", "status": "OK", "peer_accepted": False},
        ),
    ]


async def test_cache_and_peers(fake: FakeDaemon, client: PeerDistClient) -> None:
    fake.reply("GET", "/v1/cache", STATUS["cache"])
    fake.reply("DELETE", "/v1/cache", {"freed": 1234})
    peer = {"node_id": "n3", "address": "[::1]:1", "last_seen": 5, "source": "discovery"}
    fake.reply("GET", "/v1/peers", {"peers": [peer]})
    assert (await client.cache()).limit_bytes == 100
    assert await client.flush_cache() == 1234
    assert await client.peers() == [Peer("n3", "[::1]:1", 5.0, "discovery")]


async def test_base_url_uses_loopback_tcp(fake: FakeDaemon) -> None:
    fake.reply("GET", "/v1/openapi.json", {"openapi": "3.1.0"})
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with PeerDistClient(base_url=f"http://127.0.0.1:{port}/") as c:
            assert await c.openapi() == {"openapi": "3.1.0"}
            assert c.socket_path is None
    finally:
        await runner.cleanup()
    assert json.dumps(fake.seen[0].query) == "{}"
