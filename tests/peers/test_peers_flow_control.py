"""The flow-control window of reads against real daemons ("Reads are streams" in docs/api.md):
a serving peer at its upload limit grants no slot until one frees, and the reading node backs
off instead of asking it again and again; fail_blocked fails at once while no slot is free;
PEER_ACCEPTED goes exactly to reads that were queued; queued reads get slots in FIFO order.

Two daemons in a namespace of the test's own: A (127.0.0.1) publishes with one upload slot,
B (127.0.0.2) reads. The test takes A's slot itself with a request that never finishes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.content import BLOCK
from tests.peers.flow import (
    WAIT,
    block_read,
    counters,
    events,
    open_handle,
    publish,
    slots_held,
    three_nodes,
    two_nodes,
    wait_counter,
)

FETCHES = 8  # B's in-flight limit: its read and 7 blocks read ahead
HOLD = 1.0  # how long A stays at its upload limit while B's read waits (seconds)
# Busy answers B may collect while A is busy for HOLD once its window is closed: backing off
# from 50 ms, doubling, that is four or five; asking again every 50 ms, as B did, is twenty
# per fetch, and B had 8 fetches waiting.
MAX_BUSY_ANSWERS = 8


async def test_busy_peer_grants_no_slot_until_one_frees(tmp_path: Path, netns: str) -> None:
    with two_nodes(tmp_path, netns, PEERDISTD_PEERS_MAX_INFLIGHT=str(FETCHES)) as (a, b):
        data, ci = await publish(a)
        async with b.session() as api:
            h = await open_handle(api, ci)
            with slots_held(netns, 1):
                await wait_counter(a, "uploads_active", lambda v: v == 1)
                read = asyncio.ensure_future(block_read(api, h, 0))
                # Its fetch and those reading ahead (as many as B's slots) found A busy.
                await wait_counter(b, "peer_busy_answers", lambda v: v >= FETCHES)
                before = (await counters(b))["peer_busy_answers"]
                await asyncio.sleep(HOLD)  # A stays at its limit for a while
                assert not read.done()  # no slot was granted: the read waits
                busy = (await counters(b))["peer_busy_answers"] - before
                assert busy <= MAX_BUSY_ANSWERS, f"B asked the busy peer {busy:.0f} times"
            got = await asyncio.wait_for(read, WAIT)  # the slot freed: the read proceeds
            assert (got.status, got.body) == (200, data[:BLOCK])


async def test_queued_reads_fail_blocked_peer_accepted_and_fifo(tmp_path: Path, netns: str) -> None:
    with two_nodes(tmp_path, netns) as (a, b):
        data, ci = await publish(a)
        async with b.session() as api, events(b) as stream:
            handles = [await open_handle(api, ci) for _ in range(5)]
            reads: list[asyncio.Future[Any]] = []
            with slots_held(netns, 1):
                await wait_counter(a, "uploads_active", lambda v: v == 1)
                # Read 0 (the last block: nothing to read ahead) got its slot at once; A then
                # answered busy: A grants B no slot now, and the read waits for A.
                flags = "indicate_peer_accept"
                reads.append(asyncio.ensure_future(block_read(api, handles[0], 399 * BLOCK, flags)))
                await wait_counter(b, "peer_busy_answers", lambda v: v >= 1)
                # Now no transfer slot is free: fail_blocked fails at once.
                failed = await asyncio.wait_for(
                    block_read(api, handles[4], 300 * BLOCK, "fail_blocked"), WAIT
                )
                assert failed.status == 429 and b"STREAM_LIMIT_REACHED" in failed.body
                # Reads 1-3 (distinct blocks, far apart) queue, one after the other.
                for i, offset in enumerate((100, 200, 350), start=1):
                    reads.append(
                        asyncio.ensure_future(block_read(api, handles[i], offset * BLOCK, flags))
                    )
                    await wait_counter(b, "reads_queued", lambda v, i=i: v >= i)  # type: ignore[misc]
            done = await asyncio.wait_for(asyncio.gather(*reads), WAIT)
            for got, offset in zip(done, (399, 100, 200, 350), strict=True):
                assert (got.status, got.body) == (200, data[offset * BLOCK : (offset + 1) * BLOCK])
            seen = await _events_until_ended(stream, handles, ended=5)
    _check_queued_events(seen)


async def _events_until_ended(
    stream: AsyncIterator[tuple[str, dict[str, Any]]], handles: list[str], ended: int
) -> list[tuple[str, str, Any]]:
    """(event, "r<i>" for handles[i], peer_accepted) until ``ended`` reads ended."""
    seen: list[tuple[str, str, Any]] = []
    while ended:
        name, event = await asyncio.wait_for(anext(stream), WAIT)
        if event.get("handle") in handles:
            seen.append((name, f"r{handles.index(event['handle'])}", event.get("peer_accepted")))
            ended -= name == "SHUTDOWN_COMPLETE"
    return seen


def _check_queued_events(seen: list[tuple[str, str, Any]]) -> None:
    """Read 0 was accepted at once, reads 1-3 were queued in that order, read 4 never started
    (fail_blocked)."""
    starts = {r: accepted for name, r, accepted in seen if name == "START_COMPLETE"}
    assert starts == {"r0": True, "r1": False, "r2": False, "r3": False, "r4": False}
    # PEER_ACCEPTED exactly for the queued reads, in the order they queued.
    assert [r for name, r, _ in seen if name == "PEER_ACCEPTED"] == ["r1", "r2", "r3"]
    # Each queued read heard START_COMPLETE before its PEER_ACCEPTED.
    for r in ("r1", "r2", "r3"):
        names = [name for name, who, _ in seen if who == r]
        assert names == ["START_COMPLETE", "PEER_ACCEPTED", "SHUTDOWN_COMPLETE"], (r, names)


async def test_a_busy_peer_holds_up_no_read_from_another(tmp_path: Path, netns: str) -> None:
    with three_nodes(tmp_path, netns) as (a, b, c):
        data_a, ci_a = await publish(a, seed=61)
        data_c, ci_c = await publish(c, seed=62)
        async with b.session() as api:
            h_a, h_c = await open_handle(api, ci_a), await open_handle(api, ci_c)
            with slots_held(netns, 1):
                await wait_counter(a, "uploads_active", lambda v: v == 1)
                waiting = asyncio.ensure_future(block_read(api, h_a, 0))
                await wait_counter(b, "peer_busy_answers", lambda v: v >= 1)
                # C has slots: B reads from C at once, whatever waits for A meanwhile.
                for offset in range(0, 16 * BLOCK, BLOCK):
                    got = await asyncio.wait_for(block_read(api, h_c, offset), WAIT)
                    assert (got.status, got.body) == (200, data_c[offset : offset + BLOCK])
                assert not waiting.done()
            got = await asyncio.wait_for(waiting, WAIT)
            assert (got.status, got.body) == (200, data_a[:BLOCK])


async def test_reads_queue_fifo_for_the_daemons_own_limit(tmp_path: Path, netns: str) -> None:
    env = {
        "PEERDISTD_PEERS_MAX_INFLIGHT": "1",
        "PEERDISTD_PEERS_MAX_INFLIGHT_PER_PEER": "1",
        "PEERDISTD_PEERS_REQUEST_TIMEOUT_MS": "60000",
    }
    with two_nodes(tmp_path, netns, upload_limit=64, **env) as (a, b):
        data, ci = await publish(a)
        async with b.session() as api, events(b) as stream:
            handles = [await open_handle(api, ci) for _ in range(5)]
            # One block through A, so B knows A holds the segment; then A stops answering.
            warm = await open_handle(api, ci)
            assert (await block_read(api, warm, 399 * BLOCK)).status == 200
            os.kill(a.proc.pid, signal.SIGSTOP)
            try:
                flags = "indicate_peer_accept"
                reads = [asyncio.ensure_future(block_read(api, handles[0], 0, flags))]
                # Read 0 took B's only slot: every other read is blocked.
                await wait_counter(b, "transfer_slots_in_use", lambda v: v == 1)
                failed = await asyncio.wait_for(
                    block_read(api, handles[4], 300 * BLOCK, "fail_blocked"), WAIT
                )
                assert failed.status == 429 and b"STREAM_LIMIT_REACHED" in failed.body
                for i, offset in enumerate((100, 200, 350), start=1):
                    reads.append(
                        asyncio.ensure_future(block_read(api, handles[i], offset * BLOCK, flags))
                    )
                    await wait_counter(b, "reads_queued", lambda v, i=i: v >= i)  # type: ignore[misc]
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            done = await asyncio.wait_for(asyncio.gather(*reads), WAIT)
            for got, offset in zip(done, (0, 100, 200, 350), strict=True):
                assert (got.status, got.body) == (200, data[offset * BLOCK : (offset + 1) * BLOCK])
            seen = await _events_until_ended(stream, handles, ended=5)
    _check_queued_events(seen)
