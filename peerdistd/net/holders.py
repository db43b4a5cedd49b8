"""Who holds which segment: the node's one answer to "who holds segment X", with one policy.

Discovery answers ([MS-PCCRD] ProbeMatch: XAddrs and BlockCount per segment) and blocks a
peer actually delivered both feed it; a peer that said "not held" (an empty MSG_BLK, [MS-PCCRR]
2.2.4.2) leaves it (for that block; for the segment when it was only a guess), banned peers are
never offered. The one policy: every answer — "these peers hold it" and "nobody does" — is
trusted for ``ttl`` seconds from when it was learnt; a peer that delivers a block of a segment
renews that segment's entry. Past that, "nobody" is asked again by discovery, while holders are
*guessed*: asked directly, and the first lack or failure sends the read back to discovery at
once. At most ``size`` segments are remembered (the least recently learnt go first).

A content's segments are asked about a window at a time (``link``): segments linked together
share a *trail*, the peers that most recently delivered blocks of that content. A later
segment nobody has answered for yet is then first asked of those peers directly instead of
waiting for a discovery round. A segment with neither an answer nor a trail is left to
BranchCache discovery.

Windows also give the content's order (``link``: ids in content order), so the segments after
one are known: when a guess fails, or a segment has neither an answer nor a guess, the swarm
asks the LAN about it *and* about the segments around it that have no answer either
(:meth:`HolderDirectory.unanswered_near`: after it, and the few before it whose guesses are
still being tried, since a run's blocks fail in any order), in one round. When ten nodes
read one content together the trail peer usually lacks the next segment too (it is no further
on than we are); asking about each segment alone cost every node ~1,100 one-id probes per
128 MiB of V2, each parsed and looked up by all the others (docs/benchmarks.md, "Probes
when ten nodes read together"). Every segment still gets its discovery answer; the answers
just come a window at a time.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["HOLDERS_TTL", "MAX_HOLDER_SEGMENTS", "HolderDirectory"]

HOLDERS_TTL: Final = 3.0  # seconds an answer is trusted (was Discovery's hit cache)
MAX_HOLDER_SEGMENTS: Final = 8192
TRAIL_PEERS: Final = 4  # recent servers remembered per content


@dataclass(slots=True)
class _Trail:
    """The peers that most recently delivered blocks of one content, most recent first."""

    peers: list[str] = field(default_factory=list)

    def served(self, peer: str) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
        self.peers.insert(0, peer)
        del self.peers[TRAIL_PEERS:]

    def lacks(self, peer: str) -> None:
        if peer in self.peers:
            self.peers.remove(peer)


@dataclass(slots=True)
class _Entry:
    expires: float
    holders: dict[str, int]  # xaddr -> blocks it said it holds (1 when it only delivered one)
    guessed: bool = False  # from the content's trail, not from an answer
    # (peer, block index) answered "not held": a partial holder still holds the rest
    lacking: set[tuple[str, int]] = field(default_factory=set)


class HolderDirectory:
    """Segment id -> the peers holding it, each answer trusted ``ttl`` seconds."""

    def __init__(
        self,
        *,
        ttl: float = HOLDERS_TTL,
        size: int = MAX_HOLDER_SEGMENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.size, self._clock = ttl, size, clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._trails: OrderedDict[bytes, _Trail] = OrderedDict()
        # Segment -> the next (previous) one of its content, as windows linked them.
        self._next: dict[bytes, bytes] = {}
        self._prev: dict[bytes, bytes] = {}

    def __len__(self) -> int:
        return len(self._entries)

    # -- answers -------------------------------------------------------------------------

    def holders(self, segment_id: bytes) -> dict[str, int] | None:
        """Fresh holders of ``segment_id`` (empty: nobody held it when asked), or None when
        there is no answer, or it expired."""
        entry = self._fresh(segment_id)
        return None if entry is None else dict(entry.holders)

    def may_hold(self, segment_id: bytes, peer: str, index: int) -> bool:
        """False once ``peer`` answered that it lacks block ``index`` of ``segment_id``."""
        entry = self._entries.get(segment_id)
        return entry is None or (peer, index) not in entry.lacking

    def guessed(self, segment_id: bytes) -> bool:
        """Whether the holders of ``segment_id`` are the content trail's guess."""
        entry = self._fresh(segment_id)
        return entry is not None and entry.guessed

    def learn(self, answers: Mapping[bytes, Mapping[str, int]]) -> None:
        """A discovery round's answers: every segment asked about, holders or none.

        Holders still trusted (they delivered, or were named, within ``ttl``) stay: an answer
        lost on a busy LAN must not turn a known holder into "nobody holds it"."""
        expires = self._clock() + self.ttl
        for sid, hits in answers.items():
            known = self._fresh(sid)
            if known is None or known.guessed:
                self._put(sid, _Entry(expires, dict(hits)))
            else:
                self._put(sid, _Entry(expires, {**known.holders, **hits}, False, known.lacking))

    def served(self, segment_id: bytes, peer: str) -> None:
        """``peer`` delivered a verified block of ``segment_id``: it holds it, for ``ttl`` more
        seconds, and it leads the content's trail."""
        entry = self._fresh(segment_id)
        expires = self._clock() + self.ttl
        if entry is None:
            entry = _Entry(expires, {})
        entry.expires, entry.guessed = expires, False
        entry.holders.setdefault(peer, 1)
        self._put(segment_id, entry)
        trail = self._trails.get(segment_id)
        if trail is not None:
            trail.served(peer)

    def named(self, segment_id: bytes, peer: str) -> None:
        """``peer`` holds blocks of ``segment_id`` by another node's word (single flight: it
        fetched them from the origin): asked first, for ``ttl`` seconds, without discovery."""
        entry = self._fresh(segment_id)
        others = {} if entry is None or entry.guessed else entry.holders
        others.pop(peer, None)
        lacking = set() if entry is None else {k for k in entry.lacking if k[0] != peer}
        self._put(segment_id, _Entry(self._clock() + self.ttl, {peer: 1, **others}, False, lacking))

    def lacks(self, segment_id: bytes, peer: str, index: int) -> None:
        """``peer`` answered that it does not hold block ``index`` of ``segment_id``.

        A guessed holder is asked no more for the segment and guessed no more for the rest
        of the content; a holder discovery named (a partial holder: BlockCount is how many
        blocks it has, not which) is asked no more for that block."""
        entry = self._entries.get(segment_id)
        if entry is None:
            return
        if entry.guessed:
            entry.holders.pop(peer, None)
            trail = self._trails.get(segment_id)
            if trail is not None:
                trail.lacks(peer)
            if not entry.holders:  # no answer left, not "nobody holds it": ask again
                del self._entries[segment_id]
        else:
            entry.lacking.add((peer, index))

    def forget(self, segment_ids: Iterable[bytes]) -> None:
        """Drop the answers for ``segment_ids`` so the next locate asks the LAN."""
        for sid in segment_ids:
            self._entries.pop(sid, None)

    # -- trails --------------------------------------------------------------------------

    def link(self, segment_ids: Sequence[bytes]) -> None:
        """``segment_ids`` are segments of one content: one trail for them all, the one some
        of them already follow if any (a reader leads every window with the content's first
        segment, so its windows share one trail)."""
        trail = next((self._trails[s] for s in segment_ids if s in self._trails), None)
        if trail is None:
            trail = _Trail()
        for sid in segment_ids:
            self._trails[sid] = trail
            self._trails.move_to_end(sid)
        # Content order: the window after its lead is consecutive (the lead is followed by
        # the window's first segment only when the window starts at the content's start:
        # that pair is left out, it cannot be told from the others).
        for here, after in itertools.pairwise(list(segment_ids)[1:]):
            self._next[here] = after
            self._prev[after] = here
        while len(self._trails) > self.size:  # the links' keys are a subset: bounded with it
            gone, _ = self._trails.popitem(last=False)
            self._next.pop(gone, None)
            self._prev.pop(gone, None)

    def guess(self, segment_id: bytes, usable: Callable[[str], bool]) -> list[str]:
        """Record as the provisional holders of ``segment_id`` (which must have no fresh
        answer) the ``usable`` peers of its content's trail, then those of its expired answer,
        and return them.

        An expired answer is guessed from once: when that guess expires unconfirmed by a
        delivered block, discovery asks again. Guessing from the guess would keep the holders
        of one old answer forever, and a holder that missed that round (restarting, or a
        datagram lost) would never be found while another one is known."""
        trail = self._trails.get(segment_id)
        stale = self._entries.get(segment_id)
        candidates = [
            *(trail.peers if trail is not None else ()),
            *(stale.holders if stale is not None and not stale.guessed else ()),
        ]
        peers = [p for p in dict.fromkeys(candidates) if usable(p)]
        if peers:
            self._put(segment_id, _Entry(self._clock() + self.ttl, dict.fromkeys(peers, 1), True))
        return peers

    def unanswered_near(
        self, segment_id: bytes, *, after: int, before: int, steps: int
    ) -> list[bytes]:
        """Segments of ``segment_id``'s content with no fresh answer (none at all, or only a
        guess): up to ``after`` of those after it and ``before`` of those before it, each
        within ``steps`` linked segments."""
        seen = {segment_id}
        ahead = self._walk(segment_id, self._next, after, steps, seen)
        return [*self._walk(segment_id, self._prev, before, steps, seen), *ahead]

    def _walk(
        self, start: bytes, links: dict[bytes, bytes], limit: int, steps: int, seen: set[bytes]
    ) -> list[bytes]:
        found: list[bytes] = []
        sid = start
        for _ in range(steps):
            step = links.get(sid)
            if step is None or step in seen or len(found) >= limit:
                break
            seen.add(step)
            entry = self._fresh(step)
            if entry is None or entry.guessed:
                found.append(step)
            sid = step
        return found

    # -- inside --------------------------------------------------------------------------

    def _fresh(self, segment_id: bytes) -> _Entry | None:
        entry = self._entries.get(segment_id)
        if entry is None or entry.expires <= self._clock():
            return None  # an expired entry stays: its holders are still worth a guess
        return entry

    def _put(self, segment_id: bytes, entry: _Entry) -> None:
        self._entries[segment_id] = entry
        self._entries.move_to_end(segment_id)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
