"""The client SDK, fetch() and the CLI against real daemons (``peerdistd serve``, no peers)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from peerdistd import errors
from peerdistd.api.client import PeerDistClient
from peerdistd.cli import main
from peerdistd.cli.remote import fetch

SIZE = 3 * (1 << 20) + 12345  # not a multiple of the 64 KiB V1 block
CONTENT = random.Random(7).randbytes(SIZE)
OPENAPI = Path(__file__).resolve().parents[2] / "peerdistd" / "api" / "openapi.json"


@dataclass
class Node:
    socket: Path
    proc: subprocess.Popen[bytes]


def start_node(root: Path, name: str) -> Node:
    """Start ``peerdistd serve``; ready once it sends READY=1 to our NOTIFY_SOCKET (sd_notify)."""
    notify_path = root / f"{name}.notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEERDISTD_", "NOTIFY_"))}
    env |= {"NOTIFY_SOCKET": str(notify_path), "XDG_CONFIG_HOME": str(root / "config")}
    sock = root / f"{name}.sock"
    cmd = [sys.executable, "-m", "peerdistd.daemon", "serve", "--socket", str(sock)]
    cmd += ["--state-dir", str(root / f"{name}-state"), "--cache-dir", str(root / f"{name}-c")]
    with (root / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--metrics", "", "--no-peers"], env=env, stdout=log, stderr=log
        )
    deadline = time.monotonic() + 30
    with notify:
        while b"READY=1" not in _receive(notify, deadline):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((root / f"{name}.log").read_text(errors="replace"))
    return Node(sock, proc)


def _receive(notify: socket.socket, deadline: float) -> bytes:
    notify.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
    try:
        return notify.recv(4096)
    except TimeoutError:
        return b""


@pytest.fixture
def nodes() -> Iterator[tuple[Node, Node]]:
    root = Path(tempfile.mkdtemp(prefix="pdn", dir="/tmp"))  # short: sun_path has 108 bytes
    started: list[Node] = []
    try:
        started.append(start_node(root, "a"))
        started.append(start_node(root, "b"))
        yield started[0], started[1]
    finally:
        for node in started:
            node.proc.send_signal(signal.SIGTERM)
            try:
                node.proc.wait(20)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        shutil.rmtree(root)


@contextlib.asynccontextmanager
async def origin_server(folder: Path, ranges: list[str]) -> AsyncIterator[str]:
    """aiohttp's static files (which answer Range with 206), recording each Range asked."""

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        ranges.append(request.headers.get("Range", ""))
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_static("/", folder)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_publish_on_one_node_fetch_on_another(
    nodes: tuple[Node, Node], tmp_path: Path
) -> None:
    a, b = nodes
    (tmp_path / "f.bin").write_bytes(CONTENT)
    ranges: list[str] = []
    async with (
        PeerDistClient(a.socket) as pub_side,
        PeerDistClient(b.socket) as get_side,
        origin_server(tmp_path, ranges) as origin,
    ):
        pub = await pub_side.publish(tmp_path / "f.bin", id="f")
        assert (pub.id, pub.size, pub.version, pub.algorithm) == ("f", SIZE, 1, "sha256")
        assert [p.id for p in await pub_side.publications()] == ["f"]
        info = await pub_side.content_information("f")
        url = origin + "/f.bin"

        first, again = io.BytesIO(), io.BytesIO()
        got = await fetch(get_side, info, url, first)
        assert first.getvalue() == CONTENT
        # No peers: every 1 MiB piece comes from the origin, the pieces in parallel.
        pieces = [(s, min(SIZE, s + (1 << 20)) - 1) for s in range(0, SIZE, 1 << 20)]
        assert (got.size, got.from_origin, got.from_cache, got.origin_requests) == (
            SIZE,
            SIZE,
            0,
            len(pieces),
        )
        assert sorted(ranges) == sorted(f"bytes={s}-{e}" for s, e in pieces)

        got = await fetch(get_side, info, url, again)
        assert again.getvalue() == CONTENT
        assert (got.from_cache, got.from_origin) == (SIZE, 0)
        assert len(ranges) == len(pieces)

        # Content information for a range: only those bytes, at their absolute offsets.
        part = await pub_side.content_information("f", offset=100_000, length=300_000)
        sliced = io.BytesIO()
        got = await fetch(pub_side, part, url, sliced)
        assert sliced.getvalue() == CONTENT[100_000:400_000]

        status = await get_side.status()
        assert status.status == "AVAILABLE"
        assert status.counter("bytes_from_origin") == SIZE
        assert status.counter("bytes_from_cache") == SIZE
        assert status.cache.bytes_used >= SIZE


async def test_sdk_errors_from_a_real_daemon(nodes: tuple[Node, Node], tmp_path: Path) -> None:
    a, _ = nodes
    async with PeerDistClient(a.socket) as client:
        assert await client.openapi() == json.loads(OPENAPI.read_text())
        with pytest.raises(errors.InvalidData):
            await client.open_content(b"not content information")
        with pytest.raises(errors.InvalidParameter, match="no publication 'nope'"):
            await client.unpublish("nope")
        await client.publish(CONTENT[:100_000], id="small")
        info = await client.content_information("small")
        handle = await client.open_content(info)
        assert (handle.complete, handle.size, handle.range_offset) == (True, 100_000, 0)
        with pytest.raises(errors.InvalidData):
            await handle.add_data(0, bytes(65536))  # a whole block that does not verify
        read = await handle.block_read(65536, 10, timeout_ms=0)
        assert (read.offset, read.data) == (65536, CONTENT[65536:65546])
        assert await handle.available() == 100_000
        read = await handle.stream_read(1 << 20, timeout_ms=0)
        assert (read.offset, read.data) == (0, CONTENT[:100_000])
        with pytest.raises(errors.NoMore):
            await handle.stream_read()
        await handle.close()
        with pytest.raises(errors.InvalidHandle):
            await handle.block_read(0)
        async for event in client.events():
            assert (event.name, event.data) == ("STATUS_CHANGED", {"status": "AVAILABLE"})
            break


async def test_missing_data_names_the_range(nodes: tuple[Node, Node]) -> None:
    a, b = nodes
    async with PeerDistClient(a.socket) as pub_side, PeerDistClient(b.socket) as get_side:
        await pub_side.publish(CONTENT, id="f")
        async with await get_side.open_content(await pub_side.content_information("f")) as h:
            with pytest.raises(errors.MissingData) as caught:
                await h.stream_read(timeout_ms=0)
            assert (caught.value.offset, caught.value.length) == (0, SIZE)
            added = await h.add_data(0, CONTENT[:70_000])
            # One whole block verified; the partial second block is held for later.
            assert (added.offset, added.verified, added.held) == (0, 65536, 70_000 - 65536)


def test_cli_against_a_real_daemon(
    nodes: tuple[Node, Node], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _ = nodes
    sock = ["--socket", str(a.socket)]
    (tmp_path / "f.bin").write_bytes(CONTENT)
    ci = tmp_path / "f.ci"
    assert (
        main(["publish", str(tmp_path / "f.bin"), "--id", "f", "--content-info", str(ci), *sock])
        == 0
    )
    assert capsys.readouterr().out.startswith(f"published f: {SIZE} bytes, content information V1")
    assert main(["content-info", "f", "-o", str(tmp_path / "again.ci"), *sock]) == 0
    assert (tmp_path / "again.ci").read_bytes() == ci.read_bytes()
    # The publisher's own cache holds every block, so the origin is never asked.
    out = tmp_path / "out.bin"
    argv = ["fetch", "--content-info", str(ci), "--origin", "http://127.0.0.1:9/f", "-o", str(out)]
    assert main([*argv, *sock]) == 0
    assert out.read_bytes() == CONTENT
    assert "from origin (0 range requests)" in capsys.readouterr().out
    assert main(["status", "--json", *sock]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["listen"]["socket"] == str(a.socket)
    assert main(["unpublish", "f", *sock]) == 0
    assert main(["unpublish", "f", *sock]) == 1
    assert capsys.readouterr().err == ("peerdist: error: no publication 'f' (INVALID_PARAMETER)\n")
