"""Helpers of the flow-control tests: a serving peer at its upload limit, events, counters.

The peer's upload slots are held the way a slow peer holds them: a connection sends a PCCRR
request head and not its body, so the server has taken an upload slot ([MS-PCCRR] 3.2.1,
"Active Client Count") and keeps it until the request completes or the connection goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from peerdistd.proto.pccrr import MAGIC_PATH
from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon
from tests.netns import enter_netns, run_in_thread

SIZE = 400 * BLOCK  # one V1 segment, far more blocks than one read fetches ahead
A_ADDR = ("127.0.0.1", 8080)
WAIT = 20.0  # bound on every wait for a condition (seconds)


@contextlib.contextmanager
def three_nodes(tmp_path: Path, netns: str) -> Iterator[tuple[DaemonProcess, ...]]:
    """A serves with one upload slot, B reads, C serves with the default limit."""
    started: list[DaemonProcess] = []
    try:
        for name, host, env in (
            ("a", "127.0.0.1", {"PEERDISTD_PEERS_UPLOAD_LIMIT": "1"}),
            ("b", "127.0.0.2", {}),
            ("c", "127.0.0.3", {}),
        ):
            started.append(
                start_daemon(
                    tmp_path,
                    "--listen",
                    f"{host}:8080",
                    name=name,
                    netns=netns,
                    env={"PEERDISTD_PEERS_ZEROCONF": "false", **env},
                )
            )
        yield tuple(started)
    finally:
        for d in started:
            d.stop()
            d.notify.close()


@contextlib.contextmanager
def two_nodes(
    tmp_path: Path, netns: str, upload_limit: int = 1, **b_env: str
) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    """A serves with ``upload_limit`` upload slots, B reads from it."""
    started: list[DaemonProcess] = []
    try:
        for name, host, env in (
            ("a", "127.0.0.1", {"PEERDISTD_PEERS_UPLOAD_LIMIT": str(upload_limit)}),
            ("b", "127.0.0.2", b_env),
        ):
            started.append(
                start_daemon(
                    tmp_path,
                    "--listen",
                    f"{host}:8080",
                    name=name,
                    netns=netns,
                    env={"PEERDISTD_PEERS_ZEROCONF": "false", **env},
                )
            )
        yield started[0], started[1]
    finally:
        for d in started:
            d.stop()
            d.notify.close()


async def publish(a: DaemonProcess, seed: int = 61) -> tuple[bytes, bytes]:
    data = random.Random(seed).randbytes(SIZE)
    async with a.session() as api:
        async with api.post("/v1/publications", params={"id": "x"}, data=io.BytesIO(data)) as r:
            assert r.status == 201, await r.text()
        async with api.get("/v1/publications/x/content-information") as r:
            return data, await r.read()


async def counters(d: DaemonProcess) -> dict[str, float]:
    async with d.session() as api, api.get("/v1/status") as r:
        return dict((await r.json())["counters"])


async def wait_counter(d: DaemonProcess, key: str, done: Callable[[float], bool]) -> float:
    """Poll ``key`` of the daemon's counters until ``done(value)``; its value then."""
    deadline = time.monotonic() + WAIT
    while True:
        value = (await counters(d)).get(key, -1.0)
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{key} stayed at {value}"
        await asyncio.sleep(0.01)


def _connect(netns: str, addr: tuple[str, int]) -> socket.socket:
    async def connect() -> socket.socket:
        enter_netns(netns)  # this thread only; the socket stays in the namespace
        return socket.create_connection(addr, timeout=WAIT)

    return run_in_thread(connect)


@contextlib.contextmanager
def slots_held(netns: str, count: int, addr: tuple[str, int] = A_ADDR) -> Iterator[None]:
    """``count`` upload slots of the peer at ``addr`` taken by requests that never finish;
    given back (the connections closed) on exit."""
    head = (
        f"POST {MAGIC_PATH} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    conns: list[socket.socket] = []
    try:
        for _ in range(count):
            conn = _connect(netns, addr)
            conns.append(conn)
            conn.sendall(head)
        yield
    finally:
        for conn in conns:
            conn.close()


async def open_handle(api: aiohttp.ClientSession, ci: bytes) -> str:
    async with api.post("/v1/contents", data=ci) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["handle"])


@dataclass
class Read:
    status: int
    body: bytes
    read_id: str | None


async def block_read(
    api: aiohttp.ClientSession, h: str, offset: int, flags: str = "", timeout_ms: int = 30000
) -> Read:
    params = {"offset": str(offset), "max": str(BLOCK), "timeout_ms": str(timeout_ms)}
    if flags:
        params["flags"] = flags
    async with api.post(f"/v1/contents/{h}/block-read", params=params) as r:
        return Read(r.status, await r.read(), r.headers.get("PeerDist-Read-Id"))


@contextlib.asynccontextmanager
async def events(d: DaemonProcess) -> AsyncIterator[AsyncIterator[tuple[str, dict[str, Any]]]]:
    """The daemon's event stream as (name, data), subscribed before the block runs."""
    async with (
        d.session() as api,
        api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=120)) as resp,
    ):

        async def parse() -> AsyncIterator[tuple[str, dict[str, Any]]]:
            name = ""
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    yield name, json.loads(line.removeprefix("data: "))

        stream = parse()
        first = await anext(stream)  # STATUS_CHANGED: the subscription is in place
        assert first[0] == "STATUS_CHANGED"
        yield stream
