"""What this node knows of each peer it fetches from: counters, failures in a row, bans.

A peer that sends a block that does not verify, or a malformed answer, is banned at once.
A peer that fails in any other way (times out, trickles under the floor rate, resets or
refuses connections) is *backed off*: asked last among a block's holders for a while, twice
as long each time it fails again after a back-off ended (requests that were in flight together
fail together: one incident). After ``failures_to_ban`` failed requests in a row it is banned
like a peer that sent a bad block. Requests that got no answer at all (a stall) count once per
incident: one stall of an honest but overloaded holder, timing out all its in-flight requests
together, backs it off and never bans it; a peer that keeps stalling after its back-offs
does. A peer with requests outstanding past the hedge delay is asked last until they end,
which is not a failure. Any good answer clears the record. Every table is bounded: peers are
remote input.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

log = logging.getLogger(__name__)

MAX_BANS: Final = 4096
MAX_PEER_STATS: Final = 1024
BACKOFF_BASE: Final = 0.5  # seconds a peer is asked last after one failure
BACKOFF_MAX: Final = 30.0
FAILURES_TO_BAN: Final = 8  # the default of peers.failures_to_ban


@dataclass(slots=True)
class PeerStats:
    """What this node saw of one peer (keyed by its XAddr)."""

    bytes_from: int = 0  # verified block bytes fetched from it
    bad_blocks: int = 0
    errors: int = 0
    last_seen: float = 0.0  # wall clock of the last answer (discovery or retrieval)
    failures: int = 0  # failed requests since its last good answer
    backoffs: int = 0  # back-offs since its last good answer
    backoff_until: float = 0.0  # monotonic: asked last until then
    overdue: int = 0  # requests outstanding past the hedge delay: asked last meanwhile


class PeerHealth:
    """Bans, back-off and counters per peer."""

    def __init__(
        self,
        *,
        ban_seconds: float = 300.0,
        failures_to_ban: int = FAILURES_TO_BAN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ban_seconds = ban_seconds
        self.failures_to_ban = failures_to_ban  # 0: failures alone never ban
        self.bans_made = 0
        self._clock = clock
        self._bans: OrderedDict[str, float] = OrderedDict()
        self.peers: OrderedDict[str, PeerStats] = OrderedDict()

    # -- bans ----------------------------------------------------------------------------

    def banned(self, peer: str) -> bool:
        until = self._bans.get(peer)
        if until is None:
            return False
        if until <= self._clock():
            del self._bans[peer]
            return False
        return True

    def ban(self, peer: str, why: str) -> None:
        if not self.banned(peer):
            self.bans_made += 1
            log.warning("banning peer %s for %.0f s: %s", peer, self.ban_seconds, why)
        self._bans[peer] = self._clock() + self.ban_seconds
        self._bans.move_to_end(peer)
        while len(self._bans) > MAX_BANS:
            self._bans.popitem(last=False)
        self.peer(peer).failures = 0  # once the ban is over, it starts with a clean record

    def active_bans(self) -> int:
        return sum(1 for peer in list(self._bans) if self.banned(peer))

    # -- records -------------------------------------------------------------------------

    def peer(self, xaddr: str) -> PeerStats:
        stats = self.peers.get(xaddr)
        if stats is None:
            stats = self.peers[xaddr] = PeerStats()
            while len(self.peers) > MAX_PEER_STATS:
                self.peers.popitem(last=False)
        self.peers.move_to_end(xaddr)
        return stats

    def failed(self, peer: str, why: str, *, stall: bool = False) -> None:
        """A request to ``peer`` failed by its fault (not a bad block): back off, maybe ban.

        ``stall``: it got no answer at all in time; counted once per incident."""
        stats = self.peer(peer)
        stats.errors += 1
        now = self._clock()
        new_incident = stats.backoff_until <= now
        if new_incident or not stall:
            stats.failures += 1
        if new_incident:  # not backing off yet: a new incident
            backoff = min(BACKOFF_BASE * 2 ** min(stats.backoffs, 16), BACKOFF_MAX)
            stats.backoff_until = now + backoff
            stats.backoffs += 1
        log.debug("peer %s failed (%d in a row): %s", peer, stats.failures, why)
        if self.failures_to_ban and stats.failures >= self.failures_to_ban:
            self.ban(peer, f"{stats.failures} failed requests in a row, the last: {why}")

    def overdue(self, peer: str, change: int) -> None:
        """One more (+1) or one fewer (-1) request of ``peer`` outstanding past the hedge
        delay: while it has any, others are asked first (its connections may all be taken by
        slow answers); this is not a failure."""
        stats = self.peer(peer)
        stats.overdue = max(0, stats.overdue + change)

    def answered(self, peer: str) -> None:
        """``peer`` answered well: its failures are forgiven."""
        stats = self.peer(peer)
        stats.failures = stats.backoffs = 0
        stats.backoff_until = 0.0
        stats.last_seen = time.time()

    def order(self, holders: Sequence[str], first: int) -> list[str]:
        """``holders`` not banned, in the order to ask them for block ``first``: those in good
        standing from ``first`` modulo their count (so one read pulls from all of them), then
        those backed off or overdue, the soonest forgiven first."""
        now = self._clock()
        good: list[str] = []
        backing_off: list[tuple[float, str]] = []
        for peer in holders:
            if self.banned(peer):
                continue
            stats = self.peers.get(peer)
            if stats is not None and (stats.backoff_until > now or stats.overdue):
                backing_off.append((stats.backoff_until, peer))
            else:
                good.append(peer)
        if good:
            start = first % len(good)
            good = good[start:] + good[:start]
        return good + [peer for _, peer in sorted(backing_off)]
