"""The daemon's own limit of in-flight peer fetches (DESIGN.md, "Reads are streams").

A read needs a transfer slot here *and* a serving peer with an upload slot for it (the
peers' side is :meth:`PeerNetwork.at_limit` / :meth:`PeerNetwork.slot_freed`; see
:mod:`peerdistd.engine.reading` for reads, :mod:`peerdistd.engine.fetching` for fetches).
This pool holds ``limit`` slots (``peers.max_inflight``).

Waiting is first-in first-out, in two lines: fetches that had a slot, found their peers
busy and gave it back while they waited for the peers come first (:meth:`requeue`), in the
order they come back; then reads, in the order they queued (:meth:`wait`). Nobody takes a
slot past a waiter (:meth:`try_acquire` fails while anyone waits).
"""

from __future__ import annotations

import asyncio
from collections import deque


class SlotPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._retry: deque[asyncio.Future[None]] = deque()  # had a slot, gave it back
        self._waiters: deque[asyncio.Future[None]] = deque()  # reads waiting for a first slot
        self.queued = asyncio.Event()  # set whenever a read waits for a slot (observability)

    @property
    def free(self) -> int:
        return max(0, self.limit - self.in_use)

    @property
    def waiting(self) -> int:
        return len(self._retry) + len(self._waiters)

    def try_acquire(self) -> bool:
        """A slot now, if one is free and nobody waits for one."""
        if self.in_use < self.limit and not self._retry and not self._waiters:
            self.in_use += 1
            return True
        return False

    async def acquire(self, timeout: float) -> bool:
        """Take a slot, waiting up to ``timeout``; returns True if the read had to queue."""
        if self.try_acquire():
            return False
        await self.wait(timeout)
        return True

    async def wait(self, timeout: float) -> None:
        """Queue behind every waiter for a slot; TimeoutError after ``timeout`` seconds."""
        self.queued.set()
        await self._wait(self._waiters, timeout)

    async def requeue(self, timeout: float) -> None:
        """Take a slot again, ahead of reads that have not had one yet."""
        if self.in_use < self.limit and not self._retry:
            self.in_use += 1
            return
        await self._wait(self._retry, timeout)

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    async def _wait(self, queue: deque[asyncio.Future[None]], timeout: float) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we gave up: hand it on
            else:
                waiter.cancel()
            raise
        finally:
            if waiter in queue:
                queue.remove(waiter)

    def _wake(self) -> None:
        while self.in_use < self.limit:
            queue = self._retry if self._retry else self._waiters
            if not queue:
                return
            waiter = queue.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)
