"""Which piece each worker of the fetch loop takes next.

The units are the daemons' pieces (``peers.piece_size``, the cut of
:func:`peerdistd.proto.flight.piece_starts`), taken in content order from a first one and
wrapping around. Nodes of a branch that start together begin at different pieces (the loop
picks the first at random when its output can seek), so each claims and fetches a different
stretch from the origin and serves it to the others: started all at piece 0, one node stayed
ahead of the rest and fetched every piece of a V2 content, serving the whole content to nine
others alone (docs/benchmarks.md, "Ten nodes at once").

Peer readers give back what they could not read: a range nobody fetches goes to the next
worker that may claim it, before any fresh unit; a range another node is fetching comes
again after every fresh unit.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence


class Pieces:
    """The units of ``[start, end)``: cut at ``cuts`` (else every ``unit`` bytes), taken in
    order from the first (or the one :meth:`start_at` names) on, wrapping around."""

    def __init__(self, start: int, end: int, cuts: Sequence[int], unit: int) -> None:
        bounds = sorted({c for c in cuts if start < c < end})
        self.starts: list[int] = []
        self.ends: list[int] = []
        pos = start
        while pos < end:
            nxt = bisect.bisect_right(bounds, pos)
            stop = bounds[nxt] if nxt < len(bounds) else (pos // unit + 1) * unit
            self.starts.append(pos)
            self.ends.append(min(end, stop))
            pos = self.ends[-1]
        self._first = 0
        self._looked = 0  # units of the order looked at so far
        self._taken = [False] * len(self.starts)
        # Ranges given back by a reader that may not claim (fetch_loop's peer readers): ones
        # nobody fetches, for a worker that may claim them; ones another node is fetching,
        # to look at again after the rest.
        self._free: deque[tuple[int, int]] = deque()
        self._busy: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        return len(self.starts)

    def start_at(self, first: int) -> None:
        """Take the unit at index ``first`` first (call before any is taken)."""
        self._first = first % len(self.starts) if self.starts else 0

    def take(self, *, claim: bool = True) -> tuple[int, int] | None:
        """The next range to read, or None when none is left for this kind of reader: a
        worker that may ``claim`` takes the ranges given back free first; then the units no
        worker has taken, in order; then the ranges given back busy."""
        if claim and self._free:
            return self._free.popleft()
        fresh = self._take_fresh()
        if fresh is not None:
            return fresh
        return self._busy.popleft() if self._busy else None

    def give_back(self, start: int, end: int, *, free: bool) -> None:
        """A reader that may not claim gives ``[start, end)`` back: ``free``, nobody fetches
        it (a worker that may claim takes it next), else another node is fetching it."""
        (self._free if free else self._busy).append((start, end))

    def given_back(self) -> int:
        """Ranges given back and not taken again."""
        return len(self._free) + len(self._busy)

    def _take_fresh(self) -> tuple[int, int] | None:
        count = len(self.starts)
        while self._looked < count:
            i = (self._first + self._looked) % count
            self._looked += 1
            if not self._taken[i]:
                self._taken[i] = True
                return self.starts[i], self.ends[i]
        return None

    def extend(self, unit_end: int, want: int) -> int:
        """A gap runs from a unit ending at ``unit_end`` to ``want``: take the units after it
        that no worker has taken or that were given back free whole, up to the one holding
        ``want - 1``; the new end."""
        i = bisect.bisect_left(self.starts, unit_end)
        while i < len(self.starts) and self.starts[i] == unit_end and self.starts[i] < want:
            unit = (self.starts[i], self.ends[i])
            if not self._taken[i]:
                self._taken[i] = True
            elif unit in self._free:
                self._free.remove(unit)
            else:
                break
            unit_end = self.ends[i]
            i += 1
        return unit_end
