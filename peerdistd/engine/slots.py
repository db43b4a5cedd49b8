"""The flow-control window of peer fetches (DESIGN.md, "Reads are streams").

A read needs a transfer slot to ask peers for a block. The window is the smaller of two
limits: the daemon's own limit of in-flight peer fetches (``peers.max_inflight``) and the
slots the serving peers grant. A serving peer limits its concurrent uploads and answers
"busy" past that limit ([MS-PCCRR] 3.2.5.3: an empty MSG_BLK / MSG_BLKLIST); the window
learns what peers grant from those answers, the way TCP learns a congestion window:

- a fetch whose peers all answered busy gives its slot back and the window shrinks to the
  fetches still in flight: those the peers did accept. No further slot is granted until one
  of them finishes (a slot frees at the peer) ...
- ... or, when none is in flight (the peer's slots are all someone else's), until a back-off
  probe: after 50 ms, doubling with every busy answer up to 1 s, the window opens by one so
  the oldest waiting fetch asks again. Nothing asks a busy peer faster than that.
- every fetch a peer answers opens the window by one again, up to the daemon's limit.

Waiting is first-in first-out: fetches that had a slot and found their peers busy come first
(in the order they got busy), then reads in the order they queued. A read either takes a slot
at once, queues for one within its timeout, or (``fail_blocked``) fails at once with
STREAM_LIMIT_REACHED.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

BACKOFF_FIRST: Final = 0.05  # seconds before a busy peer is asked again, when nothing frees
BACKOFF_MAX: Final = 1.0


class SlotPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit  # the daemon's own limit of in-flight peer fetches
        self.window = limit  # what the peers grant, as learnt from their busy answers
        self.in_use = 0
        self.busy_answers = 0  # fetches that found every peer they asked busy
        self._retry: deque[asyncio.Future[None]] = deque()  # granted, then found peers busy
        self._waiters: deque[asyncio.Future[None]] = deque()  # reads waiting for a first slot
        self._backoff = BACKOFF_FIRST
        self._probe: asyncio.TimerHandle | None = None
        self.queued = asyncio.Event()  # set whenever a read waits for a slot (observability)

    @property
    def capacity(self) -> int:
        """Slots that may be in use now: the daemon's limit or what peers grant, if less."""
        return min(self.limit, self.window)

    @property
    def queued_count(self) -> int:
        """Reads waiting for their first slot."""
        return len(self._waiters)

    @property
    def requeued_count(self) -> int:
        """Fetches that had a slot, found their peers busy and wait to ask again."""
        return len(self._retry)

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.in_use)

    def try_acquire(self) -> bool:
        """A slot now, if one is free and nobody is waiting for one (FIFO)."""
        if self.in_use < self.capacity and not self._retry and not self._waiters:
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

    async def busy(self, timeout: float) -> None:
        """The caller holds a slot and every peer it asked answered busy: give the slot back,
        shrink the window to the fetches still in flight, and wait (ahead of reads that have
        not had a slot yet) until a slot frees or the back-off probe opens one."""
        self.busy_answers += 1
        self.in_use -= 1
        self.window = self.in_use
        if self.in_use == 0:
            self._schedule_probe()
        await self._wait(self._retry, timeout)

    def granted(self) -> None:
        """A peer answered a fetch (it had a slot for us): open the window by one."""
        self._backoff = BACKOFF_FIRST
        if self.window < self.limit:
            self.window += 1
            self._wake()

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        # Peers that granted fewer slots than the old limit still do; otherwise follow it.
        self.window = limit if self.window >= self.limit else min(self.window, limit)
        self.limit = limit
        self._wake()

    def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None

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

    def _schedule_probe(self) -> None:
        """Open the window by one after the back-off, since nothing of ours will free one."""
        if self._probe is not None:
            return
        delay, self._backoff = self._backoff, min(BACKOFF_MAX, self._backoff * 2)
        self._probe = asyncio.get_running_loop().call_later(delay, self._probe_now)

    def _probe_now(self) -> None:
        self._probe = None
        self.window = max(self.window, self.in_use + 1)
        self._wake()

    def _wake(self) -> None:
        while self.in_use < self.capacity:
            queue = self._retry if self._retry else self._waiters
            if not queue:
                return
            waiter = queue.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)
