"""Flow control of reads against real daemons ("Reads are streams", issue 9).

A (127.0.0.1) publishes with one upload slot; B (127.0.0.2) reads; both in a network namespace
of our own. The benchmark takes A's slot itself (a PCCRR request head with no body), starts
a read on B that must wait for A, and measures:

- how long a ``fail_blocked`` read takes to fail with STREAM_LIMIT_REACHED while no slot is
  free (goal: median < 5 ms), over ``--tries`` reads; next to it, a cache-hit read of one byte
  (the API's own round trip, the floor);
- the same while B's own in-flight limit is taken (``peers.max_inflight`` = 1, its one fetch
  stuck on a stopped A);
- how many busy answers B collected while A stayed at its limit for ``--hold`` seconds (it backs
  off; no figure to reach, reported), and how long the waiting read took to finish once A's
  slot freed (B notices at its next back-off probe, at most 1 s).

``python -m benchmarks streams`` or ``python -m benchmarks.bench_streams [--tries 50]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

import aiohttp

from benchmarks._nodes import namespace, run, scratch
from tests.content import BLOCK
from tests.harness import netns_unavailable
from tests.peers.flow import (
    block_read,
    counters,
    open_handle,
    publish,
    slots_held,
    two_nodes,
    wait_counter,
)

GOAL_MS = 5.0


async def fail_blocked_ms(api: aiohttp.ClientSession, h: str, tries: int) -> list[float]:
    """Milliseconds of each fail_blocked read (each must fail with STREAM_LIMIT_REACHED)."""
    took = []
    for i in range(tries):
        offset = (100 + i % 200) * BLOCK
        started = time.perf_counter()
        got = await block_read(api, h, offset, "fail_blocked")
        took.append((time.perf_counter() - started) * 1000)
        if got.status != 429:
            raise RuntimeError(f"fail_blocked read answered {got.status}: {got.body[:200]!r}")
    return took


async def hit_ms(api: aiohttp.ClientSession, h: str, offset: int, tries: int) -> list[float]:
    took = []
    params = {"offset": str(offset), "max": "1", "timeout_ms": "0"}
    for _ in range(tries):
        started = time.perf_counter()
        async with api.post(f"/v1/contents/{h}/block-read", params=params) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"cache-hit read answered {r.status}")
        took.append((time.perf_counter() - started) * 1000)
    return took


def line(label: str, ms: list[float]) -> None:
    ms = sorted(ms)
    p90 = ms[int(len(ms) * 0.9) - 1] if len(ms) >= 10 else ms[-1]
    print(
        f"   {label:<46} median {statistics.median(ms):6.2f} ms   p90 {p90:6.2f} ms"
        f"   max {ms[-1]:6.2f} ms   (n={len(ms)})",
        flush=True,
    )


async def peer_at_limit(root: Path, netns: str, tries: int, hold: float) -> None:
    with two_nodes(root, netns) as (a, b):
        _, ci = await publish(a)
        async with b.session() as api:
            h, waiting_h = await open_handle(api, ci), await open_handle(api, ci)
            with slots_held(netns, 1):
                await wait_counter(a, "uploads_active", lambda v: v == 1)
                waiting = asyncio.ensure_future(block_read(api, waiting_h, 399 * BLOCK))
                await wait_counter(b, "peers_at_limit", lambda v: v == 1)
                before = (await counters(b))["peer_busy_answers"]
                took = await fail_blocked_ms(api, h, tries)
                left = hold - sum(took) / 1000
                if left > 0:
                    await asyncio.sleep(left)  # A stays at its limit for the rest of the hold
                busy = (await counters(b))["peer_busy_answers"] - before
                freed = time.perf_counter()
            got = await waiting
            after_free = time.perf_counter() - freed
            if got.status != 200:
                raise RuntimeError(f"the waiting read answered {got.status}")
            hits = await hit_ms(api, waiting_h, 399 * BLOCK, tries)
    print("   A (upload limit 1) at its limit, B waiting for it:", flush=True)
    line("fail_blocked -> STREAM_LIMIT_REACHED", took)
    line("cache-hit read of 1 byte (API round trip)", hits)
    goal = "meets" if statistics.median(took) < GOAL_MS else "MISSES"
    print(f"   fail_blocked median {goal} the goal < {GOAL_MS:.0f} ms", flush=True)
    print(
        f"   busy answers B got while A was busy for {max(hold, sum(took) / 1000):.1f} s: "
        f"{busy:.0f}; the waiting read finished {after_free * 1000:.0f} ms after A's slot freed",
        flush=True,
    )


async def own_limit(root: Path, netns: str, tries: int) -> None:
    env = {
        "PEERDISTD_PEERS_MAX_INFLIGHT": "1",
        "PEERDISTD_PEERS_MAX_INFLIGHT_PER_PEER": "1",
        "PEERDISTD_PEERS_REQUEST_TIMEOUT_MS": "60000",
    }
    with two_nodes(root / "own", netns, upload_limit=64, **env) as (a, b):
        _, ci = await publish(a)
        async with b.session() as api:
            h, stuck_h = await open_handle(api, ci), await open_handle(api, ci)
            # One block through A, so B knows A holds the segment; then A stops answering.
            assert (await block_read(api, stuck_h, 399 * BLOCK)).status == 200
            os.kill(a.proc.pid, signal.SIGSTOP)
            try:
                stuck = asyncio.ensure_future(block_read(api, stuck_h, 0, timeout_ms=60000))
                await wait_counter(b, "transfer_slots_in_use", lambda v: v == 1)
                took = await fail_blocked_ms(api, h, tries)
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            await stuck
    print("   B's own in-flight limit (1) taken, its fetch stuck on a stopped A:", flush=True)
    line("fail_blocked -> STREAM_LIMIT_REACHED", took)


async def bench(args: argparse.Namespace, root: Path, netns: str) -> None:
    await peer_at_limit(root, netns, args.tries, args.hold)
    await own_limit(root, netns, args.tries)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_streams", description=__doc__)
    parser.add_argument("--tries", type=int, default=50)
    parser.add_argument("--hold", type=float, default=2.0)
    args = parser.parse_args(argv)
    why = netns_unavailable()
    if why:
        print(f"   skipped: this benchmark {why}", flush=True)
        return
    with scratch("bench-streams") as root, namespace() as netns:
        run(bench(args, root, netns))


if __name__ == "__main__":
    main(sys.argv[1:])
