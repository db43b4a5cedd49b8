"""The local API's data paths against their limits, measured in the same run (issue 3).

- publish of a file over the socket (POST /v1/publications, streamed) vs ``peerdist hash``;
- cache-hit stream reads (``max=1048576``) vs plain aiohttp serving the same file over a
  Unix socket, one 1 MiB request at a time both ways, alternating rounds;
- add-data (PUT /v1/contents/{h}/data, the whole content streamed) vs hashlib.sha256;
- the daemon's RSS with 1,000 open handles.

``python -m benchmarks api`` or ``python -m benchmarks.bench_api [--size 1G] [--read 256M]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from benchmarks._nodes import (
    CHUNK,
    REPO,
    PlainServer,
    file_chunks,
    mib,
    nodes,
    open_content,
    parse_size,
    publish,
    rss_mb,
    run,
    scratch,
    write_random,
)
from tests.harness import DaemonProcess

PEERDIST = str(REPO / ".venv" / "bin" / "peerdist")
GOALS = {"read": 0.7, "add": 0.6, "publish": 0.7}
RSS_GOAL_MB = 150.0


def line(what: str, ours: float, limit: float, limit_name: str, goal: float) -> None:
    print(
        f"   {what:30}: {ours:7.0f} MB/s vs {limit_name} {limit:7.0f} MB/s"
        f" = {ours / limit:.2f}x (goal >= {goal}x)",
        flush=True,
    )


def peerdist_hash(path: Path, out: Path, secret: Path) -> float:
    """Seconds that ``peerdist hash`` takes for ``path`` (a subprocess, like a user runs it)."""
    started = time.perf_counter()
    subprocess.run(
        [PEERDIST, "hash", str(path), "-o", str(out), "--secret", str(secret)], check=True
    )
    return time.perf_counter() - started


def warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(8 * CHUNK):
            pass


async def read_daemon(d: DaemonProcess, ci: bytes, total: int) -> float:
    """MB/s of 1 MiB stream reads of the first ``total`` bytes, all cache hits."""
    async with d.session() as api:
        h = await open_content(api, ci)
        got = 0
        started = time.perf_counter()
        while got < total:
            async with api.post(
                f"/v1/contents/{h}/stream-read", params={"max": str(CHUNK), "timeout_ms": "0"}
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"stream-read: {r.status} {await r.text()}")
                got += len(await r.read())
        took = time.perf_counter() - started
        async with api.delete(f"/v1/contents/{h}"):
            pass
    return got / took / 1e6


async def read_plain(server: PlainServer, total: int) -> float:
    """MB/s of 1 MiB GETs of the same file's bytes from plain aiohttp on a Unix socket."""
    async with server.session() as http:
        got = 0
        started = time.perf_counter()
        while got < total:
            async with http.get("/chunk", params={"offset": str(got), "max": str(CHUNK)}) as r:
                got += len(await r.read())
        took = time.perf_counter() - started
    return got / took / 1e6


async def bench_reads(d: DaemonProcess, ci: bytes, path: Path, total: int, rounds: int) -> None:
    unix = path.parent / "plain.sock"
    with PlainServer.start(path, unix=unix) as server:
        await read_plain(server, 64 * CHUNK)  # warm both paths alike
        await read_daemon(d, ci, 64 * CHUNK)
        ours, plain = [], []
        for _ in range(rounds):  # alternate, so load from elsewhere hits both alike
            plain.append(await read_plain(server, total))
            ours.append(await read_daemon(d, ci, total))
    print(f"   stream reads of 1 MiB, {mib(total)} x {rounds} rounds (best):", flush=True)
    line("cache-hit stream-read", max(ours), max(plain), "aiohttp/unix", GOALS["read"])


async def add_data(d: DaemonProcess, ci: bytes, path: Path, size: int) -> float:
    """MB/s of one PUT of the whole content (streamed from the file) into a fresh handle."""
    async with d.session() as api:
        h = await open_content(api, ci)
        started = time.perf_counter()
        async with api.put(
            f"/v1/contents/{h}/data", params={"offset": "0"}, data=file_chunks(path)
        ) as r:
            body = await r.json()
        took = time.perf_counter() - started
        if r.status != 200 or body["verified"] != size:
            raise RuntimeError(f"add-data: {r.status} {body}")
        async with api.delete(f"/v1/contents/{h}"):
            pass
    return size / took / 1e6


def sha256_rate(path: Path) -> float:
    """MB/s of hashlib.sha256 over the same bytes, read from the file the same way."""
    digest = hashlib.sha256()
    started = time.perf_counter()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return path.stat().st_size / (time.perf_counter() - started) / 1e6


async def bench_add(d: DaemonProcess, root: Path, size: int, rounds: int) -> None:
    path = write_random(root / "add.bin", size)
    secret = root / "origin-secret"
    ci_path = root / "add.ci"
    ours, limit = [], []
    for n in range(rounds):
        # A new passphrase each round gives new segment ids: nothing of it is in the cache.
        secret.write_bytes(b"the content server's passphrase %d" % n)
        peerdist_hash(path, ci_path, secret)
        ci = ci_path.read_bytes()
        warm(path)
        limit.append(sha256_rate(path))
        ours.append(await add_data(d, ci, path, size))
    print(f"   add-data of {mib(size)} in one streamed PUT, {rounds} rounds (best):")
    line("add-data (verify + cache)", max(ours), max(limit), "hashlib.sha256", GOALS["add"])


async def bench_handles(d: DaemonProcess, cis: dict[str, bytes], count: int) -> None:
    pid = d.proc.pid
    print(f"   daemon RSS, idle: {rss_mb(pid):.0f} MB", flush=True)
    async with d.session() as api:
        for name, ci in cis.items():
            handles = [await open_content(api, ci) for _ in range(count)]
            await asyncio.sleep(0.2)  # let the daemon settle after the last answer
            held = rss_mb(pid)
            verdict = "ok" if held < RSS_GOAL_MB else "over"
            print(
                f"   RSS with {count:,} handles open on {name}: {held:.0f} MB"
                f" (goal < {RSS_GOAL_MB:.0f} MB: {verdict})",
                flush=True,
            )
            for h in handles:
                async with api.delete(f"/v1/contents/{h}"):
                    pass


async def bench(args: argparse.Namespace, root: Path) -> None:
    path = write_random(root / "content.bin", args.size)
    small = write_random(root / "small.bin", 1 << 20)
    secret = root / "hash-secret"
    secret.write_bytes(b"a passphrase for peerdist hash")
    with nodes(root, 1) as (d,):
        warm(path)
        hashed = peerdist_hash(path, root / "content.ci", secret)
        ci, published = await publish(d, path, "content")
        print(f"   publish {mib(args.size)} streamed over the socket (one run each):")
        line(
            "publish (hash + cache)",
            args.size / published / 1e6,
            args.size / hashed / 1e6,
            "peerdist hash",
            GOALS["publish"],
        )
        await bench_reads(d, ci, path, min(args.read, args.size), args.rounds)
        await bench_add(d, root, args.add, args.rounds)
        small_ci, _ = await publish(d, small, "small")
        await bench_handles(d, {"a 1 MiB content": small_ci, mib(args.size): ci}, args.handles)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_api", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="published (1G)")
    parser.add_argument("--read", type=parse_size, default=256 << 20, help="read per round")
    parser.add_argument("--add", type=parse_size, default=256 << 20, help="added per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    parser.add_argument("--handles", type=int, default=1000, help="open handles (1000)")
    args = parser.parse_args(argv)
    with scratch("bench-api") as root:
        try:
            run(bench(args, root))
        except aiohttp.ClientError as exc:
            raise SystemExit(f"bench_api: {exc!r}") from exc


if __name__ == "__main__":
    main(sys.argv[1:])
