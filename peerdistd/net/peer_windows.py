"""What each serving peer grants us: its upload slots, as learnt from its busy answers.

A serving peer limits its concurrent uploads; past the limit it answers busy (an empty
MSG_BLK / MSG_BLKLIST, [MS-PCCRR] 3.2.5.3; our server marks it ``X-PeerDist-Busy``). The
specification leaves the client's reaction open; asking again at once, or on a short fixed
timer, only adds load to a peer that has none to spare. So each peer gets a window, learnt
the way TCP learns a congestion window:

- a busy answer shrinks the peer's window to our requests it is still serving: no request is
  sent to it until one of those finishes (one of its slots frees);
- when none of ours is in flight there (its slots are all someone else's), one probe request
  may go after a back-off: 50 ms, doubling with every further busy answer, at most 1 s;
- every other answer opens the window by one again, up to ``limit`` (the per-peer limit).

A peer whose window is full is "at its limit": fetches do not ask it, and callers can wait
until one of a set of peers may have a slot again (:meth:`wait`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Final, Literal

BACKOFF_FIRST: Final = 0.05  # seconds before a busy peer is probed again
BACKOFF_MAX: Final = 1.0
MAX_PEERS: Final = 1024  # windows remembered (bounded: peers are remote input)

Outcome = Literal["answered", "busy", "failed"]


class _Window:
    __slots__ = ("backoff", "in_flight", "probe", "probe_at", "waiters", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0
        self.backoff = BACKOFF_FIRST
        self.probe_at = 0.0  # monotonic time from which a probe may go (window 0, nothing ours)
        self.probe: asyncio.TimerHandle | None = None
        self.waiters: list[asyncio.Future[None]] = []


class PeerWindows:
    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, limit)
        self._clock = clock
        self._peers: OrderedDict[str, _Window] = OrderedDict()

    def free(self, peer: str) -> bool:
        """May a request go to ``peer`` now?"""
        w = self._peers.get(peer)
        if w is None or w.in_flight < w.window:
            return True
        return w.window == 0 and w.in_flight == 0 and self._clock() >= w.probe_at

    def at_limit(self) -> int:
        """How many peers grant us no further slot right now."""
        return sum(1 for peer in self._peers if not self.free(peer))

    def begin(self, peer: str) -> None:
        w = self._peers.get(peer)
        if w is None:
            self._trim()
            w = self._peers[peer] = _Window(self.limit)
        self._peers.move_to_end(peer)
        w.in_flight += 1

    def end(self, peer: str, outcome: Outcome) -> None:
        """A request to ``peer`` is over: it was answered, answered busy, or failed."""
        w = self._peers.get(peer)
        if w is None:
            return
        w.in_flight -= 1
        if outcome == "busy":
            w.window = w.in_flight  # what it grants us: the requests it is still serving
            if w.in_flight == 0:  # nothing of ours will free a slot there: probe later
                w.probe_at = self._clock() + w.backoff
                if w.probe is not None:
                    w.probe.cancel()
                w.probe = asyncio.get_running_loop().call_later(w.backoff, self._probe_due, peer)
                w.backoff = min(BACKOFF_MAX, w.backoff * 2)
        elif outcome == "answered":
            w.backoff = BACKOFF_FIRST
            w.window = min(self.limit, w.window + 1)
        self._wake(w)
        if w.in_flight == 0 and w.window >= self.limit and not w.waiters:
            self._forget(peer)  # back to what an unknown peer gets: nothing to remember

    async def wait(self, peers: Iterable[str], timeout: float) -> None:
        """Return once one of ``peers`` may have a slot for us (first come, first woken);
        TimeoutError after ``timeout`` seconds."""
        names = list(peers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(self.free(p) for p in names):
            waiter: asyncio.Future[None] = loop.create_future()
            watched = [self._peers[p] for p in names if p in self._peers]
            for w in watched:
                w.waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            finally:
                for w in watched:
                    if waiter in w.waiters:
                        w.waiters.remove(waiter)

    def close(self) -> None:
        for w in self._peers.values():
            if w.probe is not None:
                w.probe.cancel()
                w.probe = None

    def _probe_due(self, peer: str) -> None:
        w = self._peers.get(peer)
        if w is not None:
            w.probe = None
            w.probe_at = min(w.probe_at, self._clock())  # the loop's timer clock may lag ours
            self._wake(w)

    @staticmethod
    def _wake(w: _Window) -> None:
        waiters, w.waiters = w.waiters, []
        for waiter in waiters:  # in the order they came: they ask again in that order
            if not waiter.done():
                waiter.set_result(None)

    def _forget(self, peer: str) -> None:
        w = self._peers.pop(peer)
        if w.probe is not None:
            w.probe.cancel()

    def _trim(self) -> None:
        """Forget the least recently used idle peers past MAX_PEERS."""
        for peer in list(self._peers):
            if len(self._peers) < MAX_PEERS:
                return
            w = self._peers[peer]
            if w.in_flight == 0 and not w.waiters:
                self._forget(peer)
