"""``peerdist fetch URL`` with no content information: it asks the origin (MS-PCCRTP).

Two real daemons without peers: the origin publishes on A, the client fetches through B, so
the bytes come from the origin as MissingDataRequest ranges after the content information.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web

from peerdistd.api.client import PeerDistClient
from peerdistd.cli import main
from peerdistd.cli.pccrtp_client import fetch_url
from peerdistd.errors import RemoteError
from peerdistd.origin import running_origin
from peerdistd.proto.pccrtp import ProtocolVersion, ReplyKind
from tests.harness import DaemonProcess, start_daemon

SIZE = 1_000_003
CONTENT = random.Random(11).randbytes(SIZE)


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    root = Path(tempfile.mkdtemp(prefix="pdf", dir="/tmp"))  # short: sun_path has 108 bytes
    started: list[DaemonProcess] = []
    try:
        started.append(start_daemon(root, name="a"))
        started.append(start_daemon(root, name="b"))
        yield started[0], started[1]
    finally:
        for d in started:
            d.stop()
            d.notify.close()
        shutil.rmtree(root)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "f.bin").write_bytes(CONTENT)
    return tmp_path / "www"


@contextlib.asynccontextmanager
async def static(folder: Path, headers: dict[str, str] | None = None) -> AsyncIterator[str]:
    """A plain web server (no PeerDist), or one answering fixed headers and a fixed body."""
    app = web.Application()
    if headers is None:
        app.router.add_static("/", folder)
    else:

        async def fixed(request: web.Request) -> web.Response:
            return web.Response(body=(folder / "ci").read_bytes(), headers=headers)

        app.router.add_get("/{p:.*}", fixed)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("version", "content_version"), [(ProtocolVersion.V1_1, 2), (ProtocolVersion.V1_0, 1)]
)
async def test_fetch_url_gets_content_information_then_the_missing_ranges(
    nodes: tuple[DaemonProcess, DaemonProcess],
    folder: Path,
    version: ProtocolVersion,
    content_version: int,
) -> None:
    a, b = nodes
    out = io.BytesIO()
    async with (
        PeerDistClient(a.socket) as on_a,
        PeerDistClient(b.socket) as on_b,
        running_origin(folder, on_a, port=0) as origin,
    ):
        summary = await fetch_url(on_b, origin.url + "/f.bin", out, version=version, timeout_ms=0)
        again = io.BytesIO()
        cached = await fetch_url(on_b, origin.url + "/f.bin", again, version=version)
    assert out.getvalue() == again.getvalue() == CONTENT
    info_bytes = origin.stats.body_bytes[ReplyKind.PEERDIST] // 2
    assert (summary.peerdist, summary.size, summary.from_origin) == (True, SIZE, SIZE)
    assert (summary.content_info_bytes, summary.origin_requests) == (info_bytes, 1)
    # The second time B has it all: the origin hands out content information only.
    assert (cached.from_cache, cached.from_origin, cached.origin_requests) == (SIZE, 0, 0)
    assert origin.stats.requests == {
        ReplyKind.PEERDIST: 2,
        ReplyKind.MISSING_DATA: 1,
        ReplyKind.IDENTITY: 0,
    }
    assert origin.stats.body_bytes[ReplyKind.MISSING_DATA] == SIZE
    async with PeerDistClient(a.socket) as on_a:
        pubs = [p for p in await on_a.publications() if p.id.startswith("origin-")]
    assert content_version in {p.version for p in pubs}


async def test_fetch_url_from_a_plain_server_streams_it(
    nodes: tuple[DaemonProcess, DaemonProcess], folder: Path
) -> None:
    out = io.BytesIO()
    async with PeerDistClient(nodes[1].socket) as on_b, static(folder) as url:
        summary = await fetch_url(on_b, url + "/f.bin", out)
    assert out.getvalue() == CONTENT
    assert (summary.peerdist, summary.size, summary.from_origin, summary.from_peers) == (
        False,
        SIZE,
        SIZE,
        0,
    )
    assert summary.note == "the origin does not offer PeerDist for it"


async def test_content_length_must_match_the_content_information(
    nodes: tuple[DaemonProcess, DaemonProcess], folder: Path
) -> None:
    async with PeerDistClient(nodes[0].socket) as on_a:
        pub = await on_a.publish(CONTENT, id="cl")
        (folder / "ci").write_bytes(await on_a.content_information(pub.id))
    lying = {
        "Content-Encoding": "peerdist",
        "X-P2P-PeerDist": f"Version=1.1, ContentLength={SIZE + 1}",
    }
    async with PeerDistClient(nodes[1].socket) as on_b, static(folder, lying) as url:
        with pytest.raises(
            RemoteError, match=f"ContentLength={SIZE + 1} but the content information covers {SIZE}"
        ):
            await fetch_url(on_b, url + "/x", io.BytesIO())
    (folder / "ci").write_bytes(b"\x00\x01 not content information")
    honest = {"Content-Encoding": "peerdist"}
    async with PeerDistClient(nodes[1].socket) as on_b, static(folder, honest) as url:
        with pytest.raises(RemoteError, match="does not parse"):
            await fetch_url(on_b, url + "/x", io.BytesIO())


async def test_cli_fetch_url_reports_where_the_bytes_came_from(
    nodes: tuple[DaemonProcess, DaemonProcess],
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    a, b = nodes
    fresh = CONTENT[::-1]  # not in B's cache from the other tests
    (folder / "g.bin").write_bytes(fresh)
    out = tmp_path / "out.bin"
    argv = ["-o", str(out), "--socket", str(b.socket), "--timeout-ms", "0"]
    async with PeerDistClient(a.socket) as on_a, running_origin(folder, on_a, port=0) as origin:
        assert await asyncio.to_thread(main, ["fetch", origin.url + "/g.bin", *argv]) == 0
    assert out.read_bytes() == fresh
    async with static(folder) as plain:
        assert await asyncio.to_thread(main, ["fetch", "--origin", plain + "/f.bin", *argv]) == 0
    assert out.read_bytes() == CONTENT
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    size = origin.stats.body_bytes[ReplyKind.PEERDIST]
    assert lines[0].endswith(
        "0 B from cache, 0 B from peers, 976.6 KiB from origin (1 range request); "
        f"content information ({size} B) from the origin"
    )
    assert lines[1].endswith(
        "all from origin, plain HTTP: the origin does not offer PeerDist for it; "
        "nothing to share with peers"
    )
