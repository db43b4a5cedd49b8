"""Torture (issue 8): concurrent publishers and add-data writers against a real daemon that is
killed with SIGKILL at random moments, with clean SIGTERM restarts in between. After every
restart each publication answered 201 and each piece answered 200 in that cycle is read back
from the cache alone and compared byte for byte; at the end everything acknowledged in every
cycle is read back once more, and the whole cache is re-hashed offline.

Bounded: cycles run until ``BUDGET`` seconds have passed (at least ``MIN_CYCLES``). The counts
are printed (``pytest -s``) and written to ``torture.json`` in the test's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from peerdistd.store.blockcache import BlockCache
from tests.content import content
from tests.daemon.durability import (
    NO_EVICTION,
    Ledger,
    add_piece,
    added_content,
    check_added,
    check_publication,
    open_handle,
    publish,
)
from tests.harness import DaemonProcess, start_daemon

BUDGET = 40.0  # seconds of cycles; the final checks come on top
MIN_CYCLES = 4
ADDED_SIZE = 8 << 20  # each add-data writer's content
PUBLISHERS = 2
ADDERS = 2


async def _publisher(api: aiohttp.ClientSession, ledger: Ledger, rng: random.Random) -> None:
    while True:
        seed = rng.randrange(1 << 30)
        size = rng.randrange(1, 3 << 20)
        pub_id = f"pub-{seed}"
        if await publish(api, pub_id, content(size, seed)) == 201:
            ledger.published(pub_id, seed, size)


async def _adder(
    api: aiohttp.ClientSession, ledger: Ledger, rng: random.Random, sizes: dict[int, int]
) -> None:
    while True:
        seed = rng.randrange(1 << 30)
        sizes[seed] = ADDED_SIZE
        data, ci = added_content(seed, ADDED_SIZE)
        handle = await open_handle(api, ci)
        offsets = list(range(0, ADDED_SIZE, ledger.piece))
        rng.shuffle(offsets)
        for offset in offsets:
            if await add_piece(api, handle, offset, data[offset : offset + ledger.piece]):
                ledger.added_piece(seed, offset)


async def _check(
    d: DaemonProcess, ledger: Ledger, sizes: dict[int, int], seen: set[object] | None
) -> None:
    """Read back what was acknowledged since the last check (everything if ``seen`` is None)."""
    async with d.session() as api:
        for pub_id, (seed, size) in ledger.publications.items():
            if seen is None or (pub_id, seed) not in seen:
                await check_publication(api, ledger, pub_id, seed, size)
                if seen is not None:
                    seen.add((pub_id, seed))
        for seed, offsets in ledger.added.items():
            new = offsets if seen is None else {o for o in offsets if (seed, o) not in seen}
            if new:
                await check_added(api, ledger, seed, sizes[seed], new)
                if seen is not None:
                    seen.update((seed, o) for o in new)


@pytest.mark.timeout(300)  # ~1 min; the margin is for a loaded CI machine
async def test_torture_kill_9_and_restarts_lose_no_acknowledged_byte(tmp_path: Path) -> None:
    rng = random.Random(0x5EED)
    ledger = Ledger()
    sizes: dict[int, int] = {}
    started = time.monotonic()
    cycles = kills = 0
    seen: set[object] = set()
    d = start_daemon(tmp_path, name="torture", env=NO_EVICTION)
    try:
        while cycles < MIN_CYCLES or time.monotonic() - started < BUDGET:
            cycles += 1
            clean = cycles % 3 == 0  # every third stop is a clean SIGTERM restart
            async with d.session() as api:
                workers = [
                    *(
                        asyncio.ensure_future(_publisher(api, ledger, random.Random(rng.random())))
                        for _ in range(PUBLISHERS)
                    ),
                    *(
                        asyncio.ensure_future(
                            _adder(api, ledger, random.Random(rng.random()), sizes)
                        )
                        for _ in range(ADDERS)
                    ),
                ]
                # A random moment in the middle of the traffic (not a synchronisation: any
                # moment must do, that is the point).
                done, _ = await asyncio.wait(workers, timeout=rng.uniform(0.2, 1.5))
                for task in done:  # a worker may only stop by failing: show why
                    task.result()
                if clean:
                    d.stop(signal.SIGTERM)
                else:
                    d.proc.send_signal(signal.SIGKILL)
                    d.proc.wait()
                    kills += 1
                for task in workers:
                    task.cancel()
                for task in workers:
                    with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                        await task
            d.notify.close()
            d = start_daemon(tmp_path, name="torture", env=NO_EVICTION)
            await _check(d, ledger, sizes, seen)
            assert (ledger.lost, ledger.wrong) == (0, 0), ledger.problems[:5]
        await _check(d, ledger, sizes, None)  # everything, after every cycle
    finally:
        d.stop()
        d.notify.close()
    with BlockCache.open(tmp_path / "torture-cache" / "blocks", limit_bytes=1 << 40) as cache:
        report = cache.verify()
    counts = {
        "cycles": cycles,
        "kill_9": kills,
        "clean_restarts": cycles - kills,
        "publications_acknowledged": len(ledger.publications),
        "pieces_acknowledged": sum(len(o) for o in ledger.added.values()),
        "bytes_acknowledged": ledger.acknowledged,
        "bytes_read_back": ledger.checked,
        "bytes_lost": ledger.lost,
        "wrong_bytes": ledger.wrong,
        "blocks_on_disk": report.blocks,
        "bad_blocks_on_disk": report.bad_blocks,
    }
    print("torture:", json.dumps(counts))
    (tmp_path / "torture.json").write_text(json.dumps(counts, indent=2))
    assert ledger.acknowledged > 0 and kills > 0
    assert (ledger.lost, ledger.wrong, report.bad_blocks) == (0, 0, 0), ledger.problems[:5]
