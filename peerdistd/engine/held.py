"""Bytes added by the application that cannot be verified yet.

Data may arrive for part of a block, or before the content information that describes it
(DESIGN.md, "Read semantics"). It is held here, never served, until the rest of its block or
the covering content information arrives; then it is verified like any other data.

Memory is bounded twice: per handle (``HeldData.limit``) and over every handle of the daemon
(:class:`HeldBudget`, ``daemon.held_limit_bytes``). Pieces are ``bytearray``s grown in place,
so adding ``n`` bytes next to a held piece costs O(n), not O(piece): a 60 MiB body added in
8 KiB pieces is not copied 7680 times.
"""

from __future__ import annotations

import bisect

from peerdistd import errors


class HeldBudget:
    """Unverified bytes held by every handle together, against one global limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class HeldData:
    """Non-overlapping pieces of unverified bytes keyed by absolute offset, with a size cap."""

    def __init__(self, limit: int, budget: HeldBudget | None = None) -> None:
        self.limit = limit
        self.budget = budget if budget is not None else HeldBudget(limit)
        self._starts: list[int] = []
        self._pieces: dict[int, bytearray] = {}
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self._starts)

    def spans(self) -> list[tuple[int, int]]:
        return [(s, s + len(self._pieces[s])) for s in self._starts]

    def add(self, offset: int, data: bytes | memoryview) -> None:
        """Hold ``data`` at ``offset`` (new bytes win over held ones); nothing is held and
        INVALID_PARAMETER (this handle's cap) or SERVICE_UNAVAILABLE (the daemon's) is raised
        if a cap would be passed."""
        size = len(data)
        if not size:
            return
        # Conservative checks: merging never grows the held bytes past ``size`` more.
        if self.size + size > self.limit:
            raise errors.InvalidParameter(
                f"more than {self.limit} bytes would be held unverified on this handle; "
                "add the content information that covers them first"
            )
        if self.budget.used + size > self.budget.limit:
            raise errors.ServiceUnavailable(
                f"the daemon already holds {self.budget.used} bytes unverified for all "
                f"handles (limit {self.budget.limit}, daemon.held_limit_bytes); add the "
                "content information that covers them first, or retry later"
            )
        end = offset + size
        pos = bisect.bisect_right(self._starts, offset) - 1
        if pos >= 0 and self._starts[pos] + len(self._pieces[self._starts[pos]]) >= offset:
            start = self._starts[pos]  # extend the piece holding or touching ``offset``
            piece = self._pieces[start]
            before = len(piece)
            piece[offset - start : end - start] = data  # in place; grows at the end only
            self._grew(len(piece) - before)
            pos += 1
        else:
            start = offset
            piece = bytearray(data)
            pos += 1
            self._starts.insert(pos, start)
            self._pieces[start] = piece
            self._grew(size)
            pos += 1
        # Absorb the pieces that the new bytes reach: only their tails past ``end`` are copied.
        while pos < len(self._starts) and self._starts[pos] <= end:
            nxt = self._starts.pop(pos)
            other = self._pieces.pop(nxt)
            self._grew(-len(other))
            tail_from = end - nxt
            if tail_from < len(other):
                before = len(piece)
                piece += memoryview(other)[tail_from:]
                self._grew(len(piece) - before)
                end = nxt + len(other)

    def take(self, start: int, end: int) -> bytes | None:
        """The bytes of ``[start, end)`` if held in full (they stay held)."""
        pos = bisect.bisect_right(self._starts, start) - 1
        if pos < 0:
            return None
        piece_start = self._starts[pos]
        piece = self._pieces[piece_start]
        if piece_start + len(piece) < end:
            return None
        with memoryview(piece) as view:
            return bytes(view[start - piece_start : end - piece_start])

    def discard(self, start: int, end: int) -> None:
        """Forget ``[start, end)`` (verified or rejected), keeping what lies around it."""
        if start >= end:
            return
        pos = max(bisect.bisect_right(self._starts, start) - 1, 0)
        while pos < len(self._starts) and self._starts[pos] < end:
            piece_start = self._starts[pos]
            piece = self._pieces[piece_start]
            piece_end = piece_start + len(piece)
            if piece_end <= start:
                pos += 1
                continue
            before = len(piece)
            if piece_start < start:  # keep the head in place
                tail = piece[end - piece_start :] if piece_end > end else None
                del piece[start - piece_start :]
                self._grew(len(piece) - before)
                if tail is not None:
                    self._starts.insert(pos + 1, end)
                    self._pieces[end] = tail
                    self._grew(len(tail))
                    return
                pos += 1
                continue
            # The piece starts inside [start, end): drop its head (O(1) at a bytearray's
            # front) and re-key what is left under ``end``.
            del self._starts[pos]
            del self._pieces[piece_start]
            if piece_end > end:
                del piece[: end - piece_start]
                self._starts.insert(pos, end)
                self._pieces[end] = piece
                self._grew(len(piece) - before)
                return
            self._grew(-before)

    def clear(self) -> None:
        self._grew(-self.size)
        self._starts.clear()
        self._pieces.clear()

    def _grew(self, delta: int) -> None:
        self.size += delta
        self.budget.used += delta
