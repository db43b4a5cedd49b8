"""The background scrub's pace: :class:`~peerdistd.store.cache_scrub.Scrubber` steps on a
worker thread, with pauses that hold the configured rate (read at every step, so a reload
applies at once; 0 pauses the scrub). The pauses set a rate; they synchronise nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from peerdistd import errors

log = logging.getLogger(__name__)

STEP = 4 * 1024 * 1024  # bytes re-hashed per step, at most
IDLE = 2.0  # seconds between looks at the rate while the scrub is off
# The scrub yields to traffic: blocks arriving were verified moments ago, and re-reading them
# from the page cache proves nothing about the disk. Ten nodes fetching one content together
# spent about 5% of their CPU re-hashing what they had just stored (docs/benchmarks.md). A
# step waits while the cache takes new blocks, looking again every QUIET seconds, but never
# more than MAX_DEFER since the last step, so a cache that is always busy is still checked
# (at a step a minute).
QUIET = 2.0
MAX_DEFER = 60.0


async def run_scrub(
    step: Callable[[int], int],
    rate: Callable[[], int],
    writes: Callable[[], int] = lambda: 0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Call ``step(budget)`` (bytes checked back) forever at ``rate()`` bytes per second,
    while ``writes()`` (calls that stored blocks) stays still or MAX_DEFER has passed."""
    seen = writes()
    deferred = 0.0
    while True:
        per_second = rate()
        if per_second <= 0:
            await sleep(IDLE)
            continue
        now = writes()
        if now != seen and deferred < MAX_DEFER:
            seen = now
            deferred += QUIET
            await sleep(QUIET)
            continue
        deferred = 0.0
        budget = max(1, min(per_second, STEP))
        try:
            checked = await asyncio.to_thread(step, budget)
        except errors.PeerDistError as exc:
            log.warning("scrub step failed, trying again later: %s", exc)
            checked = 0
        await sleep(max(checked, budget) / per_second)
