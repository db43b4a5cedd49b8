"""Peer transfer: PCCRR blocks (AES-128, 64 KiB, several in flight) vs plain aiohttp on loopback.

Both move the same bytes block by block with the same concurrency from a server in a child
process (a peer is another machine; here it gets the other core) to a client in this process,
in alternating rounds so that load from elsewhere hits both alike. PCCRR runs our own HTTP/1.1
(``net/http11*``) and the AES of each block; the reference is aiohttp's server and client
moving the bare block. The figure is PCCRR MB/s over plain-aiohttp MB/s (median of rounds),
goal >= 0.6x; the CPU cost per block of each side is shown too, since it depends less on what
else the machine is doing (the load average is printed with it).
Usage: ``python -m benchmarks.bench_transfer [--size 1G] [--inflight 16] [--rounds 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
from aiohttp import web

from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.retrieval_server import RetrievalServer

BLOCK = 65536
SEGMENT_BLOCKS = 512  # V1: 32 MiB segments of 64 KiB blocks
KP = bytes(range(32))
SEED = 20240423
Fetch = Callable[[int, int], Coroutine[Any, Any, int]]


def _blocks() -> list[bytes]:
    data = random.Random(SEED).randbytes(BLOCK * SEGMENT_BLOCKS)
    return [data[i * BLOCK : (i + 1) * BLOCK] for i in range(SEGMENT_BLOCKS)]


def _segment_id(n: int) -> bytes:
    return n.to_bytes(4, "big") * 8


class _Source:
    """Every segment id maps to the same 32 MiB of blocks (no copies on read)."""

    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks = blocks

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return range(SEGMENT_BLOCKS)

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return self.blocks[index] if index < SEGMENT_BLOCKS else None


async def _answer_until_stopped(conn: Connection, port: int) -> None:
    """Send the port, then answer "cpu" with this process's CPU time until "stop"."""
    loop = asyncio.get_running_loop()
    conn.send(port)
    while await loop.run_in_executor(None, conn.recv) == "cpu":
        conn.send(time.process_time())


async def _serve(kind: str, conn: Connection) -> None:
    blocks = _blocks()
    if kind == "pccrr":
        async with RetrievalServer(_Source(blocks), "127.0.0.1", 0, upload_limit=1024) as srv:
            await _answer_until_stopped(conn, srv.port)
        return

    async def block(request: web.Request) -> web.Response:
        return web.Response(body=blocks[int(request.match_info["index"])])

    app = web.Application()
    app.router.add_get("/{segment}/{index}", block)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        await _answer_until_stopped(conn, runner.addresses[0][1])
    finally:
        await runner.cleanup()


def _child(kind: str, conn: Connection) -> None:
    _run(_serve(kind, conn))


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


class _Peer:
    """A server of one kind in a child process."""

    def __init__(self, kind: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_child, args=(kind, child), daemon=True)
        self._proc.start()
        if not self._conn.poll(60):
            self.stop()
            raise RuntimeError(f"{kind} server did not start")
        self.port: int = self._conn.recv()

    def cpu(self) -> float:
        self._conn.send("cpu")
        return float(self._conn.recv())

    def stop(self) -> None:
        if self._proc.is_alive():
            self._conn.send("stop")
            self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


@dataclass(frozen=True, slots=True)
class _Round:
    mb_per_s: float
    server_us: float  # CPU per block
    client_us: float


async def _drive(fetch: Fetch, peer: _Peer, size: int, inflight: int) -> _Round:
    count = -(-size // BLOCK)
    jobs: Iterator[int] = iter(range(count))

    async def worker() -> int:
        moved = 0
        for n in jobs:
            moved += await fetch(n // SEGMENT_BLOCKS, n % SEGMENT_BLOCKS)
        return moved

    for n in range(inflight):  # warm the connection pool
        await fetch(0, n)
    server0, client0, started = peer.cpu(), time.process_time(), time.perf_counter()
    moved = sum(await asyncio.gather(*(worker() for _ in range(inflight))))
    elapsed = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client0, peer.cpu() - server0
    assert moved == count * BLOCK, moved
    return _Round(moved / elapsed / 1e6, server_cpu / count * 1e6, client_cpu / count * 1e6)


async def _pccrr(peer: _Peer, size: int, inflight: int, check: list[bytes]) -> _Round:
    address = f"127.0.0.1:{peer.port}"
    async with RetrievalClient(connections_per_peer=inflight) as client:
        first = await client.get_block(address, _segment_id(0), 7, KP, BLOCK)
        assert first == check[7], "decrypted block differs"

        async def fetch(segment: int, index: int) -> int:
            got = await client.get_block(address, _segment_id(segment), index, KP, BLOCK)
            assert got is not None
            return len(got)

        return await _drive(fetch, peer, size, inflight)


async def _plain(peer: _Peer, size: int, inflight: int, check: list[bytes]) -> _Round:
    connector = aiohttp.TCPConnector(limit_per_host=inflight)
    async with aiohttp.ClientSession(connector=connector) as session:
        base = f"http://127.0.0.1:{peer.port}"

        async def fetch(segment: int, index: int) -> int:
            async with session.get(f"{base}/{segment}/{index}") as resp:
                return len(await resp.read())

        async with session.get(f"{base}/0/7") as resp:
            assert await resp.read() == check[7]
        return await _drive(fetch, peer, size, inflight)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_transfer", description=__doc__)
    parser.add_argument("--size", type=_size, default=1 << 30, help="bytes to move (1G)")
    parser.add_argument("--inflight", type=int, default=16, help="blocks in flight (16)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (4)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    check = _blocks()
    share = max(BLOCK, args.size // args.rounds)
    runs: dict[str, list[_Round]] = {"plain": [], "pccrr": []}
    peers = {kind: _Peer(kind) for kind in runs}
    try:
        for _ in range(args.rounds):
            runs["plain"].append(_run(_plain(peers["plain"], share, args.inflight, check)))
            runs["pccrr"].append(_run(_pccrr(peers["pccrr"], share, args.inflight, check)))
    finally:
        for peer in peers.values():
            peer.stop()
    mib = share * args.rounds / (1 << 20)
    print(
        f"   {mib:.0f} MiB each way, 64 KiB blocks, {args.inflight} in flight, {args.rounds} rounds"
        f" ({os.cpu_count()} CPUs, load average {load_before:.2f} -> {os.getloadavg()[0]:.2f})"
    )
    rate, ceiling = {}, {}
    for kind, label in (("plain", "plain aiohttp GET per block"), ("pccrr", "PCCRR AES-128 BLK")):
        rounds = runs[kind]
        rate[kind] = statistics.median(r.mb_per_s for r in rounds)
        server = statistics.median(r.server_us for r in rounds)
        client = statistics.median(r.client_us for r in rounds)
        ceiling[kind] = BLOCK / max(server, client)  # MB/s with a core for each side
        each = " ".join(f"{r.mb_per_s:.0f}" for r in rounds)
        print(
            f"   {label:27}: {rate[kind]:7.1f} MB/s (rounds {each}); "
            f"CPU/block server {server:.0f} us, client {client:.0f} us"
        )
    print(
        f"   ratio {rate['pccrr'] / rate['plain']:.2f}x by wall clock, "
        f"{ceiling['pccrr'] / ceiling['plain']:.2f}x by CPU cost (goal >= 0.6x)",
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
