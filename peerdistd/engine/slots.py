"""The flow-control window of peer fetches (DESIGN.md, "Reads are streams").

A fixed number of transfer slots; a read either takes one at once, waits for one in FIFO
order within its timeout, or (``fail_blocked``) fails at once with STREAM_LIMIT_REACHED.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SlotPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.queued = asyncio.Event()  # set whenever a read waits for a slot (observability)

    @property
    def free(self) -> int:
        return max(0, self.limit - self.in_use)

    def try_acquire(self) -> bool:
        if self.in_use < self.limit and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout``; returns True if the read had to queue."""
        if self.try_acquire():
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.queued.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we gave up: hand it on
            else:
                waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return True

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)
