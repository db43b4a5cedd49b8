"""Bytes added by the application that cannot be verified yet.

Data may arrive for part of a block, or before the content information that describes it
(DESIGN.md, "Read semantics"). It is held here, never served, until the rest of its block or
the covering content information arrives; then it is verified like any other data.
"""

from __future__ import annotations

import bisect


class HeldData:
    """Non-overlapping pieces of unverified bytes keyed by absolute offset, with a size cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._starts: list[int] = []
        self._pieces: dict[int, bytes] = {}
        self.size = 0

    def __bool__(self) -> bool:
        return bool(self._starts)

    def spans(self) -> list[tuple[int, int]]:
        return [(s, s + len(self._pieces[s])) for s in self._starts]

    def add(self, offset: int, data: bytes | memoryview) -> bool:
        """Hold ``data`` at ``offset``; False (and nothing held) if the cap would be passed."""
        if not data:
            return True
        new = bytes(data)
        if self.size + len(new) > self.limit:
            return False  # a conservative check: merging never grows past size + len(new)
        end = offset + len(new)
        # Merge with every piece that overlaps or touches [offset, end); new bytes win.
        pos = bisect.bisect_left(self._starts, offset)
        if pos > 0:
            prev = self._starts[pos - 1]
            if prev + len(self._pieces[prev]) >= offset:
                pos -= 1
        merged_start, parts = offset, [new]
        while pos < len(self._starts) and self._starts[pos] <= end:
            start = self._starts[pos]
            piece = self._pieces[start]
            piece_end = start + len(piece)
            if start < merged_start:
                parts.insert(0, piece[: merged_start - start])
                merged_start = start
            if piece_end > end:
                parts.append(piece[end - start :])
                end = piece_end
            self._drop(pos)
        self._insert(merged_start, b"".join(parts))
        return True

    def take(self, start: int, end: int) -> bytes | None:
        """The bytes of ``[start, end)`` if held in full (they stay held)."""
        pos = bisect.bisect_right(self._starts, start) - 1
        if pos < 0:
            return None
        piece_start = self._starts[pos]
        piece = self._pieces[piece_start]
        if piece_start + len(piece) < end:
            return None
        return piece[start - piece_start : end - piece_start]

    def discard(self, start: int, end: int) -> None:
        """Forget ``[start, end)`` (verified or rejected), keeping what lies around it."""
        pos = bisect.bisect_right(self._starts, start) - 1
        pos = max(pos, 0)
        while pos < len(self._starts) and self._starts[pos] < end:
            piece_start = self._starts[pos]
            piece = self._pieces[piece_start]
            piece_end = piece_start + len(piece)
            if piece_end <= start:
                pos += 1
                continue
            self._drop(pos)
            if piece_start < start:
                self._insert(piece_start, piece[: start - piece_start])
                pos += 1
            if piece_end > end:
                self._insert(end, piece[end - piece_start :])
                break

    def clear(self) -> None:
        self._starts.clear()
        self._pieces.clear()
        self.size = 0

    def _insert(self, start: int, blob: bytes) -> None:
        bisect.insort(self._starts, start)
        self._pieces[start] = blob
        self.size += len(blob)

    def _drop(self, pos: int) -> None:
        start = self._starts.pop(pos)
        self.size -= len(self._pieces.pop(start))
