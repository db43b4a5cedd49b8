"""What one bad peer beside a good one costs a read (issue 8: "bad peers cost little").

Real daemons in a network namespace of our own: A (127.0.0.1) holds every content; B
(127.0.0.2) and D (127.0.0.5) hold some too but advertise proxies (127.0.0.4, 127.0.0.6,
``tests/peers/badpeer.py``) that trickle answers at 8 KiB/s and reset every connection. C
(127.0.0.3) reads, with 1 MiB stream reads from an empty cache: content only A holds (the
limit), content A and the trickling B hold, content A and the resetting D hold. Each read is C's
first of its content, so each includes its discovery round. The figure is each read's time
as a ratio of the good-only reads' median (goal: at most 2x), on the first meeting with the
bad peer (later ones find it banned).

``python -m benchmarks badpeer`` or ``python -m benchmarks.bench_badpeer [--size 16M]``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks._nodes import (
    CACHE_LIMIT,
    mib,
    namespace,
    parse_size,
    publish,
    run,
    scratch,
    write_random,
)
from benchmarks.bench_peers import read_peer
from tests.harness import DaemonProcess, netns_unavailable, start_daemon
from tests.peers.badpeer import BadPeer

GOAL = 2.0
GOOD_ROUNDS = 6  # contents only A holds: one warm-up read, then five good-only rounds


@contextlib.contextmanager
def node(root: Path, netns: str, i: int, advertise: str = "") -> Iterator[DaemonProcess]:
    env = {"PEERDISTD_CACHE_LIMIT_BYTES": CACHE_LIMIT, "PEERDISTD_PEERS_ZEROCONF": "false"}
    if advertise:
        env["PEERDISTD_PEERS_ADVERTISE"] = advertise
    d = start_daemon(root, "--listen", f"127.0.0.{i}:8080", name=f"node{i}", netns=netns, env=env)
    try:
        yield d
    finally:
        with contextlib.suppress(Exception):
            d.stop()
        d.notify.close()


async def timed_read(c: DaemonProcess, ci: bytes, size: int) -> float:
    started = time.perf_counter()
    await read_peer(c, ci, size, 1)
    return time.perf_counter() - started


async def bench(args: argparse.Namespace, root: Path, netns: str) -> None:
    size = args.size
    with (
        node(root, netns, 1) as a,
        node(root, netns, 2, "127.0.0.4:8080") as b,
        node(root, netns, 3) as c,
        node(root, netns, 5, "127.0.0.6:8080") as d,
        BadPeer(netns, ("127.0.0.4", 8080), ("127.0.0.2", 8080), "trickle") as trickle,
        BadPeer(netns, ("127.0.0.6", 8080), ("127.0.0.5", 8080), "reset") as reset,
    ):
        cis = {}
        goods = [f"good{n}" for n in range(GOOD_ROUNDS)]
        for name, holder in [*((g, None) for g in goods), ("trickle", b), ("reset", d)]:
            ci, _ = await publish(a, write_random(root / f"{name}.bin", size), name)
            if holder is not None:  # the bad peer's daemon gets it from A (not via its proxy)
                await read_peer(holder, ci, size, 1)
            cis[name] = ci
        # Every read is C's first of its content, discovery included: a good-only round of a
        # content C has read before would find its holder without asking the LAN.
        await timed_read(c, cis[goods[0]], size)  # warm-up: connections, learnt latencies
        good = [await timed_read(c, cis[g], size) for g in goods[1:3]]
        took_trickle = await timed_read(c, cis["trickle"], size)
        good.append(await timed_read(c, cis[goods[3]], size))
        took_reset = await timed_read(c, cis["reset"], size)
        good += [await timed_read(c, cis[g], size) for g in goods[4:]]
        limit = statistics.median(good)  # the machine's load moves single rounds a lot
        print(f"   {mib(size)} read on C from an empty cache:")
        print(f"   A only (median of 5 contents)  : {limit:6.2f} s (rounds {_list(good)})")
        for label, took, bad in (
            ("A + B trickling at 8 KiB/s", took_trickle, trickle),
            ("A + D resetting connections", took_reset, reset),
        ):
            print(
                f"   {label:31}: {took:6.2f} s  {took / limit:.2f}x"
                f" ({bad.connections} connections to the bad peer)"
            )
        worst = max(took_trickle, took_reset) / limit
        print(f"   worst ratio {worst:.2f}x of the good-only read's median (goal <= {GOAL}x)")


def _list(values: list[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_badpeer", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=16 << 20, help="content size (16M)")
    args = parser.parse_args(argv)
    why = netns_unavailable()
    if why:
        print(f"   skipped: it {why}")
        return
    with scratch("bench-badpeer") as root, namespace() as netns:
        run(bench(args, root, netns))


if __name__ == "__main__":
    main(sys.argv[1:])
