"""The loop's lateness: a node whose event loop runs what is due late takes on no optional
work (fetching pieces other nodes finished, before its application asks)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peerdistd.engine.loop_lag import BUSY, DECAY, TICK, LoopLag, decayed


async def test_a_loop_held_up_is_busy_and_watching_starts_on_first_use() -> None:
    started: list[asyncio.Future[Any]] = []
    lag = LoopLag(started.append)
    assert not lag.busy() and len(started) == 1  # nothing seen yet: not busy
    await asyncio.sleep(0)  # the watcher takes its first look
    time.sleep(TICK + 3 * BUSY)  # noqa: ASYNC251 (the point: the loop is held up)
    deadline = time.monotonic() + 5
    while not lag.busy():
        assert time.monotonic() < deadline, "a held-up loop was never seen late"
        await asyncio.sleep(TICK / 5)
    assert lag.late > BUSY and len(started) == 1  # one watcher
    started[0].cancel()


def test_lateness_is_a_peak_that_decays() -> None:
    peak = decayed(0.0, 0.1)
    assert peak == 0.1
    assert decayed(peak, 0.0) == 0.1 * DECAY  # a quiet tick takes a fifth off
    ticks = 0
    while peak > BUSY:
        peak = decayed(peak, 0.001)
        ticks += 1
    assert ticks * TICK < 0.5  # 100 ms late is forgotten within half a second


async def test_the_watcher_stops_when_nobody_asks_and_starts_again_when_asked(
    monkeypatch: Any,
) -> None:
    from peerdistd.engine import loop_lag

    monkeypatch.setattr(loop_lag, "IDLE", 3 * TICK)
    started: list[asyncio.Future[Any]] = []
    lag = LoopLag(started.append)
    assert not lag.busy()
    await asyncio.wait_for(started[0], 5)  # an idle daemon is not woken 20 times a second
    assert not lag.busy() and len(started) == 2
    started[1].cancel()
