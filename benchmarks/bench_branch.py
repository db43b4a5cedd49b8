"""A branch office: N clients fetch the same content through their daemons (issue 4).

The content server's side is modelled as it is in a real branch: ``peerdist hash --secret``
makes the content information from the file (no daemon of the branch ever sees the data before
the run), and an aiohttp origin serves the file with Range support behind one shared link paced
at 100 Mbit/s. Every client is its own daemon in a network namespace of ours (127.0.0.i) and
runs ``peerdist fetch --content-info F --origin URL -o OUT``: first one after another, then, on
fresh daemons, all at once. The figure is the bytes the origin sent over the content size.

``python -m benchmarks branch`` or ``python -m benchmarks.bench_branch [--size 128M]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import time
from pathlib import Path

from benchmarks._nodes import (
    CHUNK,
    REPO,
    PlainServer,
    counters,
    mib,
    namespace,
    nodes,
    parse_size,
    run,
    scratch,
    write_random,
)
from tests.harness import DaemonProcess, netns_unavailable

PEERDIST = str(REPO / ".venv" / "bin" / "peerdist")
GOAL = 1.05
MBIT = 1e6 / 8


def digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.digest()


async def origin_bytes(origin: PlainServer) -> int:
    async with origin.session() as http, http.get("/stats") as r:
        return int((await r.json())["bytes"])


async def fetch(d: DaemonProcess, ci: Path, origin: PlainServer, out: Path, limit: float) -> float:
    """Run ``peerdist fetch`` for node ``d``; the seconds it took."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        PEERDIST,
        "fetch",
        "--socket",
        str(d.socket),
        "--content-info",
        str(ci),
        "--origin",
        origin.url,
        "-o",
        str(out),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"peerdist fetch on {d.socket.name} took over {limit:.0f} s") from None
    if proc.returncode != 0:
        text = output.decode(errors="replace").strip()
        raise RuntimeError(f"peerdist fetch on {d.socket.name} failed: {text}")
    return time.perf_counter() - started


async def round_of(
    label: str,
    clients: list[DaemonProcess],
    ci: Path,
    origin: PlainServer,
    root: Path,
    size: int,
    expected: bytes,
    together: bool,
    limit: float,
) -> None:
    before = await origin_bytes(origin)
    outs = [root / f"{label}-{n}.out" for n in range(len(clients))]
    started = time.perf_counter()
    pairs = list(zip(clients, outs, strict=True))
    if together:
        results = await asyncio.gather(*(fetch(d, ci, origin, out, limit) for d, out in pairs))
    else:
        results = [await fetch(d, ci, origin, out, limit) for d, out in pairs]
    took = time.perf_counter() - started
    sent = await origin_bytes(origin) - before
    for out in outs:
        if digest(out) != expected:
            raise RuntimeError(f"{out.name} differs from the content")
        out.unlink()
    how = "all at once" if together else "one after another"
    print(f"   {len(clients)} clients {how} ({took:.1f} s):", flush=True)
    for n, (d, seconds) in enumerate(zip(clients, results, strict=True)):
        # The daemon's own counters: the CLI's summary counts read-ahead as cache hits.
        c = await counters(d)
        print(
            f"     client {n + 1:2}: {seconds:6.1f} s; from peers {mib(c['peer_bytes_fetched'])},"
            f" from origin {mib(c['bytes_from_origin'])},"
            f" served to peers {mib(c['bytes_served_to_peers'])};"
            f" reads MISSING_DATA {c['reads_missing_data']:.0f}, TIMEOUT {c['reads_timeout']:.0f}"
        )
    verdict = "" if together else f" (goal <= {GOAL})"
    print(
        f"   origin sent {mib(sent)} for {mib(size)} of content: {sent / size:.2f}x{verdict}",
        flush=True,
    )


async def bench(args: argparse.Namespace, root: Path, netns: str) -> None:
    path = write_random(root / "content.bin", args.size)
    expected = digest(path)
    secret = root / "server-passphrase"
    secret.write_bytes(b"the content server's own passphrase")
    ci = root / "content.ci"
    hashed = await asyncio.create_subprocess_exec(
        PEERDIST, "hash", str(path), "--secret", str(secret), "-o", str(ci)
    )
    if await hashed.wait() != 0:
        raise RuntimeError("peerdist hash failed")
    rate = args.mbit * MBIT
    # Each client may take the whole content from the origin, all of them at once at worst.
    limit = 60 + 2 * args.clients * args.size / rate
    print(
        f"   {mib(args.size)} content, origin paced at {args.mbit:.0f} Mbit/s,"
        f" {args.clients} daemons (127.0.0.1-{args.clients}) in a network namespace"
    )
    with PlainServer.start(path, host="127.0.0.1", rate=rate) as origin:
        # Every round on fresh daemons: empty caches, no discovery answers remembered.
        for n, together in enumerate([False] + [True] * args.together):
            label = f"round{n}"
            with nodes(root / label, args.clients, netns=netns) as clients:
                await round_of(
                    label, clients, ci, origin, root, args.size, expected, together, limit
                )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_branch", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=128 << 20, help="content (128M)")
    parser.add_argument("--clients", type=int, default=10, help="client daemons (10)")
    parser.add_argument("--together", type=int, default=1, help="all-at-once rounds (1)")
    parser.add_argument("--mbit", type=float, default=100.0, help="origin link, Mbit/s (100)")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 250:
        parser.error("--clients must be 1..250 (one 127.0.0.x address each)")
    why = netns_unavailable()
    if why:
        print(f"   skipped: it {why}")
        return
    with scratch("bench-branch") as root, namespace() as netns:
        run(bench(args, root, netns))


if __name__ == "__main__":
    main(sys.argv[1:])
