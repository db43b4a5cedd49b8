"""Which piece each worker of the fetch loop takes next.

The units are the daemons' pieces (``peers.piece_size``, the cut of
:func:`peerdistd.proto.flight.piece_starts`), taken in content order from a first one and
wrapping around. Nodes of a branch that start together begin at different pieces (the loop
picks the first at random when its output can seek), so each claims and fetches a different
stretch from the origin and serves it to the others: started all at piece 0, one node stayed
ahead of the rest and fetched every piece of a V2 content, serving the whole content to nine
others alone (docs/benchmarks.md, "Ten nodes at once").
"""

from __future__ import annotations

import bisect
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

    def __len__(self) -> int:
        return len(self.starts)

    def start_at(self, first: int) -> None:
        """Take the unit at index ``first`` first (call before any is taken)."""
        self._first = first % len(self.starts) if self.starts else 0

    def take(self) -> tuple[int, int] | None:
        """The next unit no worker has taken, or None when all are."""
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
        that no worker has taken, up to the one holding ``want - 1``; the new end."""
        i = bisect.bisect_left(self.starts, unit_end)
        while i < len(self.starts) and self.starts[i] < want and not self._taken[i]:
            self._taken[i] = True
            unit_end = self.ends[i]
            i += 1
        return unit_end
