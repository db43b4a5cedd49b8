"""A block cache that heals: a damaged index found at run time is rebuilt on the spot.

Every public method of :class:`~peerdistd.store.blockcache.BlockCache` that touches the index
runs through :func:`healing`: when SQLite reports the file damaged (``StoreDamaged``), the
index is set aside and rebuilt from what it still proves (:func:`cache_open.rebuild_index`),
then the call runs once more on the new one. The node keeps serving what it can prove instead
of answering every request with an error. Blocks staged but not yet committed are not durable
and have no row to go to: they are dropped and their commit counts as failed, so no request
waiting for them is acknowledged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from peerdistd.errors import LocalError, StoreDamaged
from peerdistd.store.cache_open import rebuild_index
from peerdistd.store.cache_segments import SegmentTable

if TYPE_CHECKING:
    from peerdistd.store.blockcache import BlockCache

F = TypeVar("F", bound=Callable[..., Any])

# The BlockCache methods that may meet the index (properties and pin() never do).
HEALING = (
    "add_segment",
    "add_segments",
    "stage",
    "segment",
    "put_blocks",
    "commit_staged",
    "has_block",
    "held_blocks",
    "block_counts",
    "read_block",
    "read_run",
    "read_proven",
    "read_proven_run",
    "matching_blocks",
    "proven_blocks",
    "touch",
    "usage",
    "flush",
    "drop",
    "verify",
    "set_limit",
)


def healing(method: F) -> F:
    @functools.wraps(method)
    def call(self: BlockCache, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except StoreDamaged as exc:
            heal_in_place(self, str(exc))
            return method(self, *args, **kwargs)

    return call  # type: ignore[return-value]


def heal_in_place(cache: BlockCache, reason: str) -> None:
    with cache._lock:
        if cache._closed:
            raise LocalError(f"the cache index is damaged ({reason}) and the cache is closed")
        staging = cache._staging
        if staging.bytes or staging.busy:
            cache._commit_failures += 1  # whoever waits for these blocks is told
        staging.staged.clear()
        staging.committing.clear()
        staging.created.clear()
        staging.creating.clear()
        staging.bytes = 0
        for seg in cache._table.segments():
            if seg.record.segment_id in cache._pins:
                seg.fd = None  # a caller may be sendfile()ing from it: leaked, not closed
        cache._table.close()
        with contextlib.suppress(LocalError):  # it is being replaced either way
            cache._index.close()
        index, note = rebuild_index(cache.directory, reason)
        cache._index = index
        cache._table = SegmentTable(index, cache._files, cache._pins)
        cache._touched.clear()
        cache._clock = max(cache._clock, index.max_clock())
        cache._notes.append(note)
