"""Which cached segments a uid may evict with ClientFlushContent (users are isolated).

A non-root uid's flush may drop only blocks that concern nobody else; eviction of shared
blocks is root's. A segment of the flushed content *concerns somebody else* — and is kept —
if any of these holds (docs/api.md, "Flushing content"):

- it belongs to a publication (any uid's, the caller's own included: publications keep
  their blocks; unpublish first);
- an open content handle of another uid names it;
- since the daemon started, a content handle of another uid named it;
- it already held blocks when the daemon first saw it named by a handle: they were cached
  before this daemon started (or by a way that names no uid), so who caught them is unknown.

Root's flush drops every segment of the content except publications'. Segments being read
or served at that moment (pinned in the cache) are kept whoever flushes.

The record is in memory and bounded: the oldest entries are forgotten first, and a
forgotten segment that still holds blocks counts as of unknown origin when seen again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from peerdistd.engine.handle import ContentHandle
from peerdistd.engine.view import ContentView
from peerdistd.errors import PeerDistError

UNKNOWN = -1  # stands for "somebody we cannot name" in a segment's set of uids
RECORD_LIMIT = 1 << 20  # segments remembered (~100 bytes each)
ROOT_UID = 0
ALL = 1 << 63  # an offset past any content: segment_ids(0, ALL) names every segment


class SegmentUsers:
    """Segment id -> the uids whose content handles named it since the daemon started."""

    def __init__(
        self, held: Callable[[Sequence[bytes]], Mapping[bytes, int]], limit: int = RECORD_LIMIT
    ) -> None:
        self._held = held  # segment ids -> held block counts (only those holding any)
        self._limit = limit
        self._users: OrderedDict[bytes, set[int]] = OrderedDict()

    def note(self, uid: int, segment_ids: Iterable[bytes]) -> None:
        """``uid`` opened (or extended) content naming these segments."""
        ids = list(dict.fromkeys(segment_ids))
        new = [s for s in ids if s not in self._users]
        try:
            counts = self._held(new) if new else {}
            unknown = {s for s in new if counts.get(s)}
        except PeerDistError:  # the index cannot tell: whoever cached them is unknown
            unknown = set(new)
        for seg_id in new:
            self._users[seg_id] = {UNKNOWN} if seg_id in unknown else set()
        for seg_id in ids:
            self._users[seg_id].add(uid)
            self._users.move_to_end(seg_id)
        while len(self._users) > self._limit:
            self._users.popitem(last=False)

    def only(self, uid: int, segment_id: bytes) -> bool:
        """Whether ``uid`` is the one party known to have used the segment."""
        return self._users.get(segment_id) == {uid}

    def evictable(
        self,
        uid: int,
        view: ContentView,
        published: Collection[bytes],
        handles: Iterable[ContentHandle],
    ) -> list[bytes]:
        """The segments of ``view`` that ``uid``'s flush drops (the rules above)."""
        victims = [s for s in view.segment_ids(0, ALL) if s not in published]
        if uid == ROOT_UID:
            return victims
        others = {
            seg_id
            for other in handles
            if other.owner_uid != uid and other.view is not None
            for seg_id in other.view.segment_ids(0, ALL)
        }
        return [s for s in victims if s not in others and self.only(uid, s)]
