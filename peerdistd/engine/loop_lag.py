"""How late the event loop runs what is due: a node that cannot keep up takes on no optional
work (fetching the pieces other nodes finish before its application asks for them).

Ten nodes at once on two cores: every DONE fetched by every node starved the claimants' own
origin ranges (docs/benchmarks.md, "Fetched on DONE"); a node whose loop runs late is such a
node, whatever the cause (its CPU, the host's).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

TICK = 0.05  # seconds between looks
DECAY = 0.8  # per tick: a late tick counts for a few tenths of a second
BUSY = 0.02  # seconds late: busy
IDLE = 10.0  # seconds without a question: the watcher stops (an idle daemon stays asleep)


class LoopLag:
    """The recent lateness of the running loop, as a peak that decays; started on first use."""

    def __init__(self, spawn: Callable[[asyncio.Future[Any]], None]) -> None:
        self._spawn = spawn
        self._task: asyncio.Task[None] | None = None
        self.late = 0.0  # seconds
        self._asked = 0.0  # loop time of the last question

    def busy(self) -> bool:
        """Whether the loop ran what was due late recently (watching starts on first call,
        and again on the first after :data:`IDLE` seconds without one)."""
        self._asked = asyncio.get_running_loop().time()
        if self._task is None:
            self._task = asyncio.ensure_future(self._watch())
            self._spawn(self._task)
        return self.late > BUSY

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while loop.time() - self._asked < IDLE:
                due = loop.time() + TICK
                await asyncio.sleep(TICK)
                self.late = decayed(self.late, loop.time() - due)
        finally:
            self._task = None
            self.late = 0.0


def decayed(peak: float, late: float) -> float:
    """The new peak after a tick that ran ``late`` seconds late."""
    return max(late, peak * DECAY)
