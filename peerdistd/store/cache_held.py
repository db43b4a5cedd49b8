"""The cache index's segments in memory: which are held, with how many blocks each.

Discovery asks the cache about every segment id of every probe it receives ([MS-PCCRD]
3.2.4.1: a node answers only for segments it holds). With V2 content information a 128 MiB
content is about a thousand segments, and ten nodes reading one content together each got
about 15,000 probes, nearly all about segments they did not hold; each was answered with
SQLite lookups (docs/benchmarks.md, "Probes when ten nodes read together"). This map answers
them from memory: an id it does not have costs one dict lookup.

It mirrors the committed rows of the ``segments`` table (one entry per row, so it is bounded
by the cache's segment count): its ``blocks`` column and whether the segment may be served
to peers (V2, or V1 with a proven hash list). :class:`~peerdistd.store.index.CacheIndex`
feeds it from the very statements that change those rows (``RETURNING`` the new values) and
applies them when the transaction commits; a rollback discards them, and a failed commit
makes it read the table again. So it is exact under add, put, commit, drop, eviction, verify
and heal without trusting any caller to keep it in step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# The value of an entry: blocks << 1 | served (one small int per segment, not a tuple).
_SERVED = 1


def entry(blocks: int, served: bool) -> int:
    return blocks << 1 | (_SERVED if served else 0)


class HeldSegments:
    """Segment id -> (held blocks, servable to peers), as committed; changes wait for COMMIT."""

    def __init__(self, rows: Iterable[tuple[bytes, int, bool]] = ()) -> None:
        self._entries: dict[bytes, int] = {}
        self._pending: dict[bytes, int | None] = {}  # None: the row was deleted
        self.stale = False  # a commit failed: read the table again before answering
        self.reset(rows)

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self, rows: Iterable[tuple[bytes, int, bool]]) -> None:
        """Every row of the table, as read just now (outside a transaction)."""
        # A new dict, swapped in at once: a reader without the cache lock sees the old map
        # or the new one, never half of one.
        self._entries = {bytes(sid): entry(blocks, served) for sid, blocks, served in rows}
        self._pending.clear()
        self.stale = False

    # -- changes (inside a transaction) ------------------------------------------------------

    def put(self, segment_id: bytes, blocks: int, served: bool) -> None:
        self._pending[bytes(segment_id)] = entry(blocks, served)

    def delete(self, segment_id: bytes) -> None:
        self._pending[bytes(segment_id)] = None

    def commit(self) -> None:
        for sid, value in self._pending.items():
            if value is None:
                self._entries.pop(sid, None)
            else:
                self._entries[sid] = value
        self._pending.clear()

    def rollback(self) -> None:
        self._pending.clear()

    # -- answers -----------------------------------------------------------------------------

    def has(self, segment_id: bytes) -> bool:
        """Whether the segment has a row (held blocks or not: staged ones count elsewhere)."""
        return segment_id in self._entries

    def counts(self, segment_ids: Sequence[bytes], *, proven_only: bool) -> dict[bytes, int]:
        """Held block counts (segments with none left out); ``proven_only``: of segments
        that may be served to peers."""
        found: dict[bytes, int] = {}
        entries = self._entries
        for sid in segment_ids:
            value = entries.get(sid)
            if value is None or value < 2 or (proven_only and not value & _SERVED):
                continue
            found[sid] = value >> 1
        return found
