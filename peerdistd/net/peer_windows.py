"""What each serving peer grants us: its upload slots, as learnt from its busy answers.

A serving peer limits its concurrent uploads; past the limit it answers busy (an empty
MSG_BLK / MSG_BLKLIST, [MS-PCCRR] 3.2.5.3; our server marks it ``X-PeerDist-Busy``). The
specification leaves the client's reaction open; asking again at once, or on a short fixed
timer, only adds load to a peer that has none to spare. So each peer gets a window, learnt
the way TCP learns a congestion window:

- a busy answer shrinks the peer's window to our requests it is still serving: no request is
  sent to it until one of those finishes (one of its slots frees);
- when none of ours is in flight there (its slots are all someone else's), the window stays
  shut until a probe (a one-block MSG_GETBLKLIST, [MS-PCCRR] 2.2.4.2) is answered without
  busy; probes go only while somebody waits for the peer, after a back-off of 50 ms,
  doubling with every busy answer, at most 1 s. The answered probe opens the window to one;
- every other answer opens the window by one again, up to ``limit``: the most requests this
  node ever has in flight (``peers.max_inflight``), so a peer that never said busy is
  limited only by our own limits (those and the connections per peer of the client).

A slot is thus granted only on the peer's word: a peer whose window is full is "at its
limit"; fetches do not ask it, and callers can wait until one of a set of peers has a slot
for us again (:meth:`wait`), first come first woken.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, Literal

BACKOFF_FIRST: Final = 0.05  # seconds before a busy peer is probed again
BACKOFF_MAX: Final = 1.0
MAX_PEERS: Final = 1024  # windows remembered (bounded: peers are remote input)

Outcome = Literal["answered", "busy", "failed"]
Probe = Callable[[str, bytes], Awaitable[Outcome]]  # (peer, a segment id it holds) -> outcome


class _Window:
    __slots__ = (
        "backoff",
        "in_flight",
        "probe_ready",
        "probing",
        "segment",
        "timer",
        "waiters",
        "window",
    )

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0
        self.backoff = BACKOFF_FIRST
        self.timer: asyncio.TimerHandle | None = None  # the back-off before the next probe
        self.probing = False
        self.probe_ready = False  # the back-off ran out while nobody waited: probe on demand
        self.segment = b""  # a segment the peer holds (what a probe asks about)
        self.waiters: list[asyncio.Future[None]] = []


class PeerWindows:
    def __init__(
        self, limit: int, probe: Probe, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = max(1, limit)
        self._probe = probe
        self._clock = clock
        self._peers: OrderedDict[str, _Window] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def free(self, peer: str) -> bool:
        """Has ``peer`` a slot for one more request of ours?"""
        w = self._peers.get(peer)
        return w is None or w.in_flight < w.window

    def at_limit(self) -> int:
        """How many peers grant us no further slot right now."""
        return sum(1 for peer in self._peers if not self.free(peer))

    def begin(self, peer: str, segment_id: bytes) -> None:
        w = self._peers.get(peer)
        if w is None:
            self._trim()
            w = self._peers[peer] = _Window(self.limit)
        self._peers.move_to_end(peer)
        w.in_flight += 1
        w.segment = segment_id

    def end(self, peer: str, outcome: Outcome) -> None:
        """A request to ``peer`` is over: it was answered, answered busy, or failed."""
        w = self._peers.get(peer)
        if w is None:
            return
        w.in_flight -= 1
        if outcome == "busy":
            w.window = w.in_flight  # what it grants us: the requests it is still serving
        elif outcome == "answered":
            w.backoff = BACKOFF_FIRST
            w.window = min(self.limit, w.window + 1)
        # Shut, nothing of ours will free a slot there, and no probe is on its way: back off.
        shut = w.window == 0 and w.in_flight == 0
        if shut and w.timer is None and not w.probing and not w.probe_ready:
            self._back_off(peer, w)
        self._wake(w)
        if w.in_flight == 0 and w.window >= self.limit and not w.waiters:
            self._forget(peer)  # back to what an unknown peer gets: nothing to remember

    async def wait(self, peers: Iterable[str], timeout: float) -> None:
        """Return once one of ``peers`` has a slot for us (first come, first woken);
        TimeoutError after ``timeout`` seconds."""
        names = list(peers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not any(self.free(p) for p in names):
            waiter: asyncio.Future[None] = loop.create_future()
            watched = [(p, self._peers[p]) for p in names if p in self._peers]
            for peer, w in watched:
                w.waiters.append(waiter)
                if w.probe_ready:
                    self._start_probe(peer, w)
            try:
                await asyncio.wait_for(waiter, max(0.0, deadline - loop.time()))
            finally:
                for _, w in watched:
                    if waiter in w.waiters:
                        w.waiters.remove(waiter)

    async def aclose(self) -> None:
        for w in self._peers.values():
            if w.timer is not None:
                w.timer.cancel()
                w.timer = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _back_off(self, peer: str, w: _Window) -> None:
        """Nothing of ours will free a slot there: probe after the back-off."""
        if w.timer is not None:
            w.timer.cancel()
        w.timer = asyncio.get_running_loop().call_later(w.backoff, self._back_off_over, peer)
        w.backoff = min(BACKOFF_MAX, w.backoff * 2)

    def _back_off_over(self, peer: str) -> None:
        w = self._peers.get(peer)
        if w is None:
            return
        w.timer = None
        if w.waiters:
            self._start_probe(peer, w)
        else:
            w.probe_ready = True  # nobody needs the peer now: probe when somebody does

    def _start_probe(self, peer: str, w: _Window) -> None:
        w.probe_ready = False
        w.probing = True
        task = asyncio.ensure_future(self._probe_peer(peer, w))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe_peer(self, peer: str, w: _Window) -> None:
        outcome: Outcome = "failed"
        try:
            outcome = await self._probe(peer, w.segment)
        finally:
            w.probing = False
        if self._peers.get(peer) is not w:
            return
        if outcome == "busy":
            if w.in_flight == 0 and w.window == 0:
                self._back_off(peer, w)
            return
        if outcome == "answered":
            w.backoff = BACKOFF_FIRST
        # Answered: it has a slot. Failed: the fetch that asks next will find out why.
        w.window = max(w.window, 1)
        self._wake(w)

    @staticmethod
    def _wake(w: _Window) -> None:
        waiters, w.waiters = w.waiters, []
        for waiter in waiters:  # in the order they came: they ask again in that order
            if not waiter.done():
                waiter.set_result(None)

    def _forget(self, peer: str) -> None:
        w = self._peers.pop(peer)
        if w.timer is not None:
            w.timer.cancel()

    def _trim(self) -> None:
        """Forget the least recently used idle peers past MAX_PEERS."""
        for peer in list(self._peers):
            if len(self._peers) < MAX_PEERS:
                return
            w = self._peers[peer]
            if w.in_flight == 0 and not w.waiters and not w.probing:
                self._forget(peer)
