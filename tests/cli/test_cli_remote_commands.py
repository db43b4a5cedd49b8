"""The remote subcommands end to end through main(), against a fake daemon in another thread."""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from peerdistd.cli import main

PUB = {"id": "x", "size": 3, "version": 2, "algorithm": "sha512", "segments": 1, "created": 1.0}
STATUS: dict[str, Any] = {
    "status": "AVAILABLE",
    "version": "0.1.0",
    "node_id": "node-a",
    "uptime": 61.0,
    "cache": {"bytes_used": 1024, "limit_bytes": 4096, "segments": 1, "blocks": 16, "evictions": 2},
    "counters": {"cache_hits": 3, "cache_misses": 1, "bytes_from_peers": 3 << 20},
    "peers": [{"node_id": "node-b", "address": "127.0.0.2:54322", "last_seen": 0}],
    "listen": {"socket": "/run/peerdistd/api.sock", "peers": "0.0.0.0:54322"},
}
CONTENT = b"origin bytes " * 1000


class Fake:
    """The daemon's routes the commands use, with one content that is wholly missing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []
        self.offset = 0
        self.added = b""
        self.deny = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.seen.append((request.method, request.path, dict(request.query), body))
        route = (request.method, request.path)
        if self.deny:
            return web.json_response({"error": "ACCESS_DENIED", "message": "root only"}, status=403)
        if route == ("GET", "/v1/status"):
            return web.json_response(STATUS)
        if route == ("POST", "/v1/publications"):
            return web.json_response({**PUB, "size": len(body)}, status=201)
        if route == ("GET", "/v1/publications/x/content-information"):
            return web.Response(body=b"CI:" + json.dumps(dict(request.query)).encode())
        if route == ("DELETE", "/v1/publications/nope"):
            return web.json_response(
                {"error": "INVALID_HANDLE", "message": "no such id"}, status=404
            )
        if route == ("GET", "/v1/cache"):
            return web.json_response(STATUS["cache"])
        if route == ("DELETE", "/v1/cache"):
            if request.query.get("publications") == "true":
                return web.json_response({"freed": 4096, "kept_for_publications": 0})
            return web.json_response({"freed": 1536, "kept_for_publications": 2048})
        if route == ("GET", "/v1/peers"):
            peer = {**STATUS["peers"][0], "source": "discovery"}
            return web.json_response({"peers": [peer]})
        if route == ("POST", "/v1/contents"):
            state = {"handle": "h", "complete": True, "version": 1, "size": len(CONTENT)}
            return web.json_response(
                {**state, "range": {"offset": 0, "length": len(CONTENT)}}, status=201
            )
        if route == ("POST", "/v1/contents/h/stream-read"):
            if request.query["max"] == "0":
                return web.Response(headers={"PeerDist-Available": "0"})
            if self.offset:
                return web.json_response({"error": "NO_MORE", "message": ""}, status=416)
            self.offset = len(CONTENT)
            gap = {"error": "MISSING_DATA", "message": "", "offset": 0, "length": len(CONTENT)}
            return web.json_response(gap, status=424)
        if route == ("POST", "/v1/contents/h/block-read"):  # the fetch loop's reads
            start = int(request.query["offset"])
            if start < len(self.added):
                end = min(len(self.added), start + int(request.query["max"]))
                return web.Response(
                    body=self.added[start:end], headers={"PeerDist-Offset": str(start)}
                )
            gap = {"error": "MISSING_DATA", "message": "", "offset": start}
            return web.json_response({**gap, "length": len(CONTENT) - start}, status=424)
        if route == ("PUT", "/v1/contents/h/data"):
            self.added += body
            n = len(body)
            return web.json_response(
                {"offset": int(request.query["offset"]), "length": n, "verified": n, "held": 0}
            )
        return web.Response(status=204)

    async def origin(self, request: web.Request) -> web.StreamResponse:
        first, last = (int(x) for x in request.headers["Range"].removeprefix("bytes=").split("-"))
        status = 206 if request.path == "/good" else 200
        headers = {"Content-Range": f"bytes {first}-{last}/{len(CONTENT)}"}
        return web.Response(status=status, body=CONTENT[first : last + 1], headers=headers)


class Served:
    """Serves the fake daemon (Unix socket) and an origin (loopback TCP) from a thread."""

    def __init__(self, fake: Fake, folder: Path) -> None:
        self.fake = fake
        self.socket = folder / "api.sock"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.runners: list[web.AppRunner] = []
        self.origin = ""

    async def _start(self) -> None:
        api, origin = web.Application(), web.Application()
        api.router.add_route("*", "/{tail:.*}", self.fake.handle)
        origin.router.add_get("/{name}", self.fake.origin)
        self.runners = [web.AppRunner(api), web.AppRunner(origin)]
        for runner in self.runners:
            await runner.setup()
        await web.UnixSite(self.runners[0], str(self.socket)).start()
        await web.TCPSite(self.runners[1], "127.0.0.1", 0).start()
        self.origin = f"http://127.0.0.1:{self.runners[1].addresses[0][1]}"

    async def _stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()

    def __enter__(self) -> Served:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served() -> Iterator[Served]:
    with (
        tempfile.TemporaryDirectory(prefix="pdm", dir="/tmp") as folder,
        Served(Fake(), Path(folder)) as s,
    ):
        yield s


def run(served: Served, *argv: str) -> int:
    return main([*argv, "--socket", str(served.socket)])


def test_status_summary(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(served, "status") == 0
    out = capsys.readouterr().out
    for text in ("AVAILABLE", "node-a", "1.0 KiB of 4.0 KiB (25%)", "3.0 MiB", "node-b"):
        assert text in out
    # By bytes, as BranchCache counts: all 3 MiB came from peers, none from the origin.
    assert re.search(r"hit ratio \(cache \+ peers\) *│ *100\.0%", out), out
    assert re.search(r"local hit ratio \(cache\) *│ *0\.0%", out), out


def test_status_json(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(served, "status", "--json") == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert doc["cache"] == STATUS["cache"]
    assert doc["counters"] == STATUS["counters"]
    assert {k: v for k, v in doc["listen"].items() if v is not None} == STATUS["listen"]
    counters = {"bytes_from": 0, "bytes_to": 0, "bad_blocks": 0, "banned": False}
    assert doc["peers"] == [{**STATUS["peers"][0], "last_seen": 0.0, "source": None, **counters}]


def test_publish_writes_content_information(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    ci = tmp_path / "ci.bin"
    assert run(served, "publish", str(tmp_path / "f"), "--id", "x", "--content-info", str(ci)) == 0
    assert capsys.readouterr().out == (
        "published x: 3 bytes, content information V2 (sha512), 1 segments\n"
    )
    assert ci.read_bytes() == b"CI:{}"
    method, path, query, body = served.fake.seen[0]
    assert (method, path, query, body) == (
        "POST",
        "/v1/publications",
        {"id": "x", "version": "1", "hash": "sha256"},
        b"abc",
    )


def test_content_info_range(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "ci"
    argv = ("content-info", "x", "--offset", "0", "--length", "9", "--version", "2", "-o", str(out))
    assert run(served, *argv) == 0
    assert json.loads(out.read_bytes()[3:]) == {"offset": "0", "length": "9", "version": "2"}


def test_uid_names_another_uids_publication(served: Served, tmp_path: Path) -> None:
    """Publication ids are per uid: root's --uid N goes to the daemon as ?uid=N."""
    (tmp_path / "f").write_bytes(b"abc")
    out = tmp_path / "ci"
    assert run(served, "publish", str(tmp_path / "f"), "--id", "x", "--uid", "1000") == 0
    assert run(served, "content-info", "x", "--uid", "1000", "-o", str(out)) == 0
    assert run(served, "unpublish", "x", "--uid", "1000") == 0
    asked = [(m, path, q.get("uid")) for m, path, q, _ in served.fake.seen]
    assert asked == [
        ("POST", "/v1/publications", "1000"),
        ("GET", "/v1/publications/x/content-information", "1000"),
        ("DELETE", "/v1/publications/x", "1000"),
    ]
    assert json.loads(out.read_bytes()[3:]) == {"uid": "1000"}


def test_daemon_errors_are_one_line(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(served, "unpublish", "nope") == 1
    assert capsys.readouterr().err == "peerdist: error: no such id (INVALID_HANDLE)\n"
    served.fake.deny = True
    assert run(served, "cache", "--flush") == 1
    assert capsys.readouterr().err == "peerdist: error: root only (ACCESS_DENIED)\n"


def test_cache_and_peers(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(served, "cache", "--flush") == 0
    assert capsys.readouterr().out == "freed 1.5 KiB; kept 2.0 KiB for publications\n"
    assert run(served, "cache", "--flush", "--include-publications") == 0
    assert capsys.readouterr().out == "freed 4.0 KiB\n"
    assert served.fake.seen[-1][:3] == ("DELETE", "/v1/cache", {"publications": "true"})
    assert run(served, "cache") == 0
    assert "16" in capsys.readouterr().out
    assert run(served, "peers") == 0
    out = capsys.readouterr().out
    assert "127.0.0.2:54322" in out
    assert "discovery" in out


def test_fetch_writes_the_file_and_a_summary(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ci").write_bytes(b"CI")
    out = tmp_path / "got.bin"
    argv = ("fetch", "--content-info", str(tmp_path / "ci"), "--origin", served.origin + "/good")
    assert run(served, *argv, "-o", str(out)) == 0
    assert out.read_bytes() == CONTENT
    assert served.fake.added == CONTENT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci", "got.bin"]
    summary = capsys.readouterr().out
    assert summary.startswith("fetched 12.7 KiB in ")
    assert summary.endswith(
        ": 0 B from cache, 0 B from peers, 12.7 KiB from origin (1 range request)\n"
    )


def test_failed_fetch_leaves_no_file(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ci").write_bytes(b"CI")
    argv = ("fetch", "--content-info", str(tmp_path / "ci"), "--origin", served.origin + "/bad")
    assert run(served, *argv, "-o", str(tmp_path / "got.bin")) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci"]
    err = capsys.readouterr().err
    assert err.startswith(f"peerdist: error: origin {served.origin}/bad (bytes 0-12999): HTTP 200")
    assert err.count("\n") == 1
