"""The background scrub's pace: :class:`~peerdistd.store.cache_scrub.Scrubber` steps on a
worker thread, with pauses that hold the configured rate (read at every step, so a reload
applies at once; 0 pauses the scrub). The pauses set a rate; they synchronise nothing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from peerdistd import errors

log = logging.getLogger(__name__)

STEP = 4 * 1024 * 1024  # bytes re-hashed per step, at most
IDLE = 2.0  # seconds between looks at the rate while the scrub is off


async def run_scrub(step: Callable[[int], int], rate: Callable[[], int]) -> None:
    """Call ``step(budget)`` (bytes checked back) forever at ``rate()`` bytes per second."""
    while True:
        per_second = rate()
        if per_second <= 0:
            await asyncio.sleep(IDLE)
            continue
        budget = max(1, min(per_second, STEP))
        try:
            checked = await asyncio.to_thread(step, budget)
        except errors.PeerDistError as exc:
            log.warning("scrub step failed, trying again later: %s", exc)
            checked = 0
        await asyncio.sleep(max(checked, budget) / per_second)
