"""Two real daemons sharing content on loopback, against plain aiohttp (issue 4).

A (127.0.0.1) and B (127.0.0.2) run in a network namespace of our own. A publishes the content;
B reads it with 1 MiB stream reads (PCCRD discovery, AES-128 PCCRR blocks from A, verified,
cached), its cache emptied before each round. The limit is plain aiohttp on 127.0.0.1 serving
the same file, downloaded whole (sendfile) and in 1 MiB range requests, in alternating rounds.
Then the time from a miss to the first block from a peer, over many small contents.

``python -m benchmarks peers`` or ``python -m benchmarks.bench_peers [--size 1G] [--misses 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from benchmarks._nodes import (
    CHUNK,
    PlainServer,
    counters,
    mib,
    namespace,
    nodes,
    open_content,
    parse_size,
    publish,
    run,
    scratch,
    write_random,
)
from tests.harness import DaemonProcess, netns_unavailable

GOAL = 0.6
READ_TIMEOUT_MS = "5000"


async def flush(d: DaemonProcess) -> None:
    async with d.session() as api, api.delete("/v1/cache") as r:
        r.raise_for_status()


async def read_peer(b: DaemonProcess, ci: bytes, size: int, outstanding: int) -> float:
    """MB/s of B reading the whole content from an empty cache, ``outstanding`` reads at once."""
    await flush(b)
    before = (await counters(b))["bytes_from_peers"]
    async with b.session() as api:
        h = await open_content(api, ci)
        spans: list[tuple[int, int]] = []
        done = False

        async def reader() -> None:
            nonlocal done
            while not done:
                async with api.post(
                    f"/v1/contents/{h}/stream-read",
                    params={"max": str(CHUNK), "timeout_ms": READ_TIMEOUT_MS},
                ) as r:
                    if r.status == 416:  # NO_MORE
                        done = True
                        return
                    if r.status != 200:
                        raise RuntimeError(f"stream-read: {r.status} {await r.text()}")
                    spans.append((int(r.headers["PeerDist-Offset"]), len(await r.read())))

        started = time.perf_counter()
        await asyncio.gather(*(reader() for _ in range(outstanding)))
        took = time.perf_counter() - started
        async with api.delete(f"/v1/contents/{h}"):
            pass
    from_peers = (await counters(b))["bytes_from_peers"] - before
    covered = 0
    for offset, length in sorted(spans):  # reads are served in order, each the next range
        if offset != covered:
            raise RuntimeError(f"reads skipped or repeated bytes at {covered} (next {offset})")
        covered += length
    if covered != size or from_peers != size:
        raise RuntimeError(f"read {covered} bytes, {from_peers} from peers, of {size}")
    return size / took / 1e6


async def download_whole(server: PlainServer, size: int) -> float:
    async with server.session() as http:
        started = time.perf_counter()
        got = 0
        async with http.get("/file") as r:
            async for chunk in r.content.iter_chunked(CHUNK):
                got += len(chunk)
        took = time.perf_counter() - started
    assert got == size, got
    return size / took / 1e6


async def download_chunks(server: PlainServer, size: int) -> float:
    async with server.session() as http:
        started = time.perf_counter()
        got = 0
        while got < size:
            async with http.get("/chunk", params={"offset": str(got), "max": str(CHUNK)}) as r:
                got += len(await r.read())
        took = time.perf_counter() - started
    return size / took / 1e6


async def bench_transfer(
    b: DaemonProcess, ci: bytes, path: Path, size: int, rounds: int, outstanding: int
) -> None:
    rates: dict[str, list[float]] = {"whole": [], "chunks": [], "peer": []}
    with PlainServer.start(path, host="127.0.0.1") as server:
        for _ in range(rounds):  # alternate, so load from elsewhere hits all alike
            rates["whole"].append(await download_whole(server, size))
            rates["chunks"].append(await download_chunks(server, size))
            rates["peer"].append(await read_peer(b, ci, size, outstanding))
    best = {k: max(v) for k, v in rates.items()}
    print(
        f"   {mib(size)} published on A, read on B ({outstanding} stream read(s) of 1 MiB"
        f" outstanding), {rounds} rounds (best):"
    )
    for key, label in (
        ("whole", "plain aiohttp GET, whole file"),
        ("chunks", "plain aiohttp GETs of 1 MiB"),
        ("peer", "B stream-read, PCCRR from A"),
    ):
        runs = " ".join(f"{r:.0f}" for r in rates[key])
        print(f"   {label:30}: {best[key]:7.0f} MB/s  (rounds: {runs})")
    print(
        f"   ratio {best['peer'] / best['whole']:.2f}x of the whole-file download"
        f" ({best['peer'] / best['chunks']:.2f}x of 1 MiB GETs) (goal >= {GOAL}x)",
        flush=True,
    )


async def bench_misses(a: DaemonProcess, b: DaemonProcess, root: Path, count: int) -> None:
    """Median time from the first read of content B lacks to its first block from A."""
    cis = []
    for n in range(count):
        path = write_random(root / f"miss-{n}.bin", 256 * 1024)
        ci, _ = await publish(a, path, f"miss-{n}")
        cis.append(ci)
    times: list[float] = []
    missed: list[str] = []
    async with b.session() as api:
        for ci in cis:
            h = await open_content(api, ci)
            started = time.perf_counter()
            async with api.post(
                f"/v1/contents/{h}/stream-read",
                params={"max": str(CHUNK), "timeout_ms": READ_TIMEOUT_MS},
            ) as r:
                data = await r.read()
            took = (time.perf_counter() - started) * 1000
            if r.status == 200 and data:
                times.append(took)
            else:  # A holds it, yet B was told to go to the origin: count it, go on
                missed.append(f"{r.status} after {took:.0f} ms")
            async with api.delete(f"/v1/contents/{h}"):
                pass
    times.sort()
    if times:
        print(
            f"   miss to first block from a peer, {len(times)} contents of 256 KiB:"
            f" median {statistics.median(times):.0f} ms, min {times[0]:.0f} ms,"
            f" p90 {times[int(0.9 * (len(times) - 1))]:.0f} ms, max {times[-1]:.0f} ms",
            flush=True,
        )
    if missed:
        print(f"   first reads not served by the peer that holds them: {', '.join(missed)}")


async def bench(args: argparse.Namespace, root: Path, netns: str) -> None:
    path = write_random(root / "content.bin", args.size)
    with nodes(root, 2, netns=netns) as (a, b):
        ci, _ = await publish(a, path, "content")
        await bench_transfer(b, ci, path, args.size, args.rounds, args.outstanding)
        if args.misses:
            await bench_misses(a, b, root, args.misses)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_peers", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="content size (1G)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (2)")
    parser.add_argument("--outstanding", type=int, default=1, help="reads in flight on B (1)")
    parser.add_argument("--misses", type=int, default=50, help="contents for the miss time (50)")
    args = parser.parse_args(argv)
    why = netns_unavailable()
    if why:
        print(f"   skipped: it {why}")
        return
    with scratch("bench-peers") as root, namespace() as netns:
        run(bench(args, root, netns))


if __name__ == "__main__":
    main(sys.argv[1:])
