"""Shared helpers of the daemon benchmarks: real nodes, namespaces, plain servers, sizes.

Nodes are started with the test harness (``tests/harness.py``: NOTIFY_SOCKET readiness,
``ip netns exec``). The plain aiohttp servers that give each benchmark its limit run in a child
process of their own (``python -m benchmarks._nodes``), as the daemon does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.harness import DaemonProcess, netns_unavailable, start_daemon

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# Every node's cache holds what a benchmark gives it: never let eviction skew a figure.
CACHE_LIMIT = str(16 << 30)


def parse_size(text: str) -> int:
    """``256M``, ``1G``, ``1.5GiB`` or plain bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in UNITS:
        return int(float(text[:-1]) * UNITS[text[-1]])
    return int(text)


def mib(n: float) -> str:
    return f"{n / (1 << 20):.0f} MiB"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on uvloop, the loop the daemon uses."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory, removed with everything in it (sockets, caches, logs)."""
    path = Path(tempfile.mkdtemp(prefix=f"peerdistd-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_random(path: Path, size: int) -> Path:
    """``size`` random bytes (nothing repeats, so no segment is shared by accident)."""
    with path.open("wb") as f:
        left = size
        while left:
            n = min(4 * CHUNK, left)
            f.write(os.urandom(n))
            left -= n
    return path


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """A network namespace of our own with only loopback, up and multicast-capable."""
    why = netns_unavailable()
    if why:
        raise SystemExit(f"this benchmark {why}")
    name = f"pdb-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up", "multicast", "on"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@contextlib.contextmanager
def nodes(
    root: Path, count: int, *, netns: str | None = None, env: dict[str, str] | None = None
) -> Iterator[list[DaemonProcess]]:
    """``count`` daemons; in ``netns`` node i listens for peers on 127.0.0.i:8080."""
    started: list[DaemonProcess] = []
    full_env = {"PEERDISTD_CACHE_LIMIT_BYTES": CACHE_LIMIT, "PEERDISTD_PEERS_ZEROCONF": "false"}
    full_env.update(env or {})
    try:
        for i in range(count):
            args = ["--listen", f"127.0.0.{i + 1}:8080"] if netns else []
            started.append(
                start_daemon(root, *args, name=f"node{i + 1}", netns=netns, env=full_env)
            )
        yield started
    finally:
        for d in started:
            with contextlib.suppress(Exception):
                d.stop()
            d.notify.close()


def rss_mb(pid: int) -> float:
    """The resident set of ``pid`` (VmRSS of /proc/PID/status) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for {pid}")


async def file_chunks(path: Path, size: int = CHUNK) -> AsyncIterator[bytes]:
    """``path`` in chunks, for a streamed request body (page-cache reads; no thread hop)."""
    with path.open("rb") as f:
        while chunk := f.read(size):
            yield chunk


async def publish(d: DaemonProcess, path: Path, pub_id: str) -> tuple[bytes, float]:
    """Publish ``path`` on ``d`` streamed from the file: its content information, seconds."""
    async with d.session() as api:
        started = time.perf_counter()
        async with api.post("/v1/publications", params={"id": pub_id}, data=file_chunks(path)) as r:
            if r.status != 201:
                raise RuntimeError(f"publish: {r.status} {await r.text()}")
            await r.read()
        took = time.perf_counter() - started
        async with api.get(f"/v1/publications/{pub_id}/content-information") as r:
            return await r.read(), took


async def open_content(api: aiohttp.ClientSession, ci: bytes) -> str:
    async with api.post("/v1/contents", data=ci) as r:
        if r.status != 201:
            raise RuntimeError(f"open: {r.status} {await r.text()}")
        return str((await r.json())["handle"])


async def counters(d: DaemonProcess) -> dict[str, float]:
    async with d.session() as api, api.get("/v1/status") as r:
        return dict((await r.json())["counters"])


# -- plain aiohttp servers in a child process ---------------------------------------------


class PlainServer:
    """``python -m benchmarks._nodes`` serving one file; stopped when the block ends."""

    def __init__(self, proc: subprocess.Popen[str], where: str) -> None:
        self.proc = proc
        self.where = where  # a Unix socket path or "HOST:PORT"

    @classmethod
    @contextlib.contextmanager
    def start(
        cls,
        path: Path,
        *,
        unix: Path | None = None,
        host: str = "127.0.0.1",
        rate: float = 0.0,
        netns: str | None = None,
    ) -> Iterator[PlainServer]:
        cmd = [
            *(["ip", "netns", "exec", netns] if netns else []),
            sys.executable,
            "-m",
            "benchmarks._nodes",
            str(path),
            *(["--unix", str(unix)] if unix else ["--host", host]),
            "--rate",
            str(rate),
        ]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()  # the server prints where it listens
            if not line:
                raise RuntimeError(f"plain server did not start (exit {proc.wait(10)})")
            yield cls(proc, line)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def session(self) -> aiohttp.ClientSession:
        if self.where.startswith("/"):
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(path=self.where)
            return aiohttp.ClientSession(connector=connector, base_url="http://plain")
        return aiohttp.ClientSession(base_url=f"http://{self.where}")

    @property
    def url(self) -> str:
        return f"http://{self.where}/file"


class _Pacer:
    """One link of ``rate`` bytes/s shared by every response (a WAN link in front of origin)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        start = max(now, self.free_at)
        self.free_at = start + n / self.rate
        if self.free_at > now:
            await asyncio.sleep(self.free_at - now)


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one ``bytes=a-b`` range of a Range header as (start, end exclusive)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    start = int(first) if first else size - int(last)
    end = min(size, int(last) + 1) if first and last else size
    return start, end


def plain_app(path: Path, rate: float) -> web.Application:
    """GET /file (whole or one Range, paced at ``rate``), GET /chunk?offset=&max=, GET /stats."""
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    pacer = _Pacer(rate)
    stats = {"bytes": 0, "requests": 0}

    async def chunk(request: web.Request) -> web.Response:
        offset, most = int(request.query["offset"]), int(request.query["max"])
        data = os.pread(fd, min(most, max(0, size - offset)), offset)
        return web.Response(body=data, content_type="application/octet-stream")

    async def whole(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        span = _range(request.headers.get("Range"), size)
        if span is None and rate <= 0:
            stats["bytes"] += size
            return web.FileResponse(path)  # sendfile: the plainest download there is
        start, end = span or (0, size)
        resp = web.StreamResponse(status=206 if span else 200)
        resp.content_type = "application/octet-stream"
        resp.content_length = end - start
        if span:
            resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        await resp.prepare(request)
        pos = start
        while pos < end:
            n = min(64 * 1024, end - pos)
            await pacer.take(n)
            await resp.write(os.pread(fd, n, pos))
            stats["bytes"] += n
            pos += n
        await resp.write_eof()
        return resp

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/file", whole)
    app.router.add_get("/chunk", chunk)
    app.router.add_get("/stats", get_stats)
    return app


async def _serve(path: Path, unix: str | None, host: str, rate: float) -> None:
    runner = web.AppRunner(plain_app(path, rate), access_log=None)
    await runner.setup()
    site: web.BaseSite
    if unix:
        site = web.UnixSite(runner, unix)
        where = unix
    else:
        site = web.TCPSite(runner, host, 0)
    await site.start()
    if not unix:
        where = "{}:{}".format(*runner.addresses[0][:2])
    print(where, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmarks._nodes", description="a plain file server")
    parser.add_argument("file", type=Path)
    parser.add_argument("--unix")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rate", type=float, default=0.0, help="bytes/s for /file (0: no cap)")
    args = parser.parse_args(argv)
    run(_serve(args.file, args.unix, args.host, args.rate))


if __name__ == "__main__":
    _main(sys.argv[1:])
