"""Durable before acknowledged (issue 8, finding 3): a 201 from publish and a 200 from
add-data mean the bytes survive a clean restart and kill -9 right after the answer."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp

from tests.content import BLOCK, content
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


def _restart(d: DaemonProcess, tmp_path: Path, sig: int) -> DaemonProcess:
    d.stop(sig)
    d.notify.close()
    return start_daemon(tmp_path, name="durable", env=NO_EVICTION)


async def test_concurrent_publishes_survive_a_clean_restart(tmp_path: Path) -> None:
    """Three writers x four publishes, then SIGTERM: every 201 is still there, all bytes."""
    ledger = Ledger()
    d = start_daemon(tmp_path, name="durable", env=NO_EVICTION)
    try:
        for round_no in range(2):
            async with d.session() as api:

                async def writer(api: aiohttp.ClientSession, seeds: range) -> None:
                    for seed in seeds:
                        size = 6 * (1 << 20) + seed * 4099
                        pub_id = f"pub-{seed}"
                        assert await publish(api, pub_id, content(size, seed)) == 201
                        ledger.published(pub_id, seed, size)

                first = round_no * 100 + 1
                await asyncio.gather(
                    *(writer(api, range(first + 10 * w, first + 10 * w + 4)) for w in range(3))
                )
            d = _restart(d, tmp_path, signal.SIGTERM)
            async with d.session() as api:
                for pub_id, (seed, size) in ledger.publications.items():
                    await check_publication(api, ledger, pub_id, seed, size)
    finally:
        d.stop()
        d.notify.close()
    assert len(ledger.publications) == 24
    assert (ledger.lost, ledger.wrong, ledger.problems) == (0, 0, [])


async def test_added_pieces_survive_kill_9_right_after_the_last_200(tmp_path: Path) -> None:
    """Add-data in 1 MiB pieces, kill -9 as soon as the last one is answered: nothing lost."""
    ledger = Ledger()
    size = 6 << 20
    d = start_daemon(tmp_path, name="durable", env=NO_EVICTION)
    try:
        for cycle in range(3):
            seed = 1000 + cycle
            data, ci = added_content(seed, size)
            async with d.session() as api:
                handle = await open_handle(api, ci)
                for offset in range(0, size, ledger.piece):
                    piece = data[offset : offset + ledger.piece]
                    assert await add_piece(api, handle, offset, piece)
                    ledger.added_piece(seed, offset)
            d = _restart(d, tmp_path, signal.SIGKILL)  # at once: no time for a late commit
            async with d.session() as api:
                await check_added(api, ledger, seed, size, ledger.added[seed])
    finally:
        d.stop()
        d.notify.close()
    assert ledger.checked == ledger.acknowledged == 3 * size
    assert (ledger.lost, ledger.wrong, ledger.problems) == (0, 0, [])


assert (6 << 20) % BLOCK == 0
