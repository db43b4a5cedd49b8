"""``BlockCache.commit_staged``: one group commit of the staged blocks (see cache_staging).

Batches commit one at a time and in order: a caller that finds a commit running waits for it,
then commits what was staged meanwhile. The segment files of the batch (and the directories of
new ones) are synced without the cache's lock, so reads and the staging of the next batch go on
meanwhile; the rows are then indexed in one transaction whose COMMIT fsyncs the WAL. A failure
forgets the batch's blocks (they were never indexed), counts it and raises: whoever waits for
that batch learns its data is not durable.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from peerdistd.store.index import db_errors

if TYPE_CHECKING:
    from peerdistd.store.blockcache import BlockCache

log = logging.getLogger(__name__)


def commit_staged(cache: BlockCache) -> int:
    """Commit every block staged before the call; returns the bytes committed.

    Called holding the cache's lock (at close), the sync simply runs under it.
    """
    staging = cache._staging
    with cache._lock:
        while staging.busy and not cache._closed:
            cache._commit_done.wait()
        if cache._closed:
            return 0
        batch = staging.begin_commit()
        if not staging.committing:  # nothing (left) to commit: the batch is done at once
            staging.end_commit()
            staging.finish(batch)
            cache._commit_done.notify_all()
            return 0
        created = sorted(staging.creating)
        # A batch synced with one syncfs needs no descriptor of its files (opening each new
        # V2 segment's file again, only to close it, cost a path and an open per segment).
        whole_fs = cache._files.syncs_whole_fs(len(staging.committing) + len(created))
        fds = (
            []
            if whole_fs
            else [f for r in staging.committing if (f := cache._files.open(r)) is not None]
        )
    try:
        try:
            if cache._sync and whole_fs:
                cache._files.syncfs()  # data and new files' names durable before the rows
            elif cache._sync:
                cache._files.sync_batch(fds, created)
        finally:
            for fd in fds:
                os.close(fd)
    except BaseException:
        with cache._lock:
            _fail(cache, batch)
        raise
    with cache._lock:
        return _index_batch(cache, batch)


def _index_batch(cache: BlockCache, batch: int) -> int:
    staging = cache._staging
    rows_by_seg = staging.committing
    committed = sum(n for rows in rows_by_seg.values() for n, _ in rows.values())
    try:
        with db_errors("commit_staged"):
            cache._clock += 1
            with cache._index.transaction(durable=cache._sync):
                cache._index.insert_blocks_of(
                    [
                        (rowid, [(i, n, h) for i, (n, h) in rows.items()])
                        for rowid, rows in rows_by_seg.items()
                    ],
                    cache._clock,
                )
                cache._flush_touches()
    except BaseException:
        _fail(cache, batch)
        raise
    staging.end_commit()
    staging.finish(batch)
    cache._commit_done.notify_all()
    return committed


def _fail(cache: BlockCache, batch: int) -> None:
    """The batch could not be made durable: forget its blocks (never indexed)."""
    cache._commit_failures += 1
    by_rowid = {seg.rowid: seg for seg in cache._table.segments()}
    for rowid, rows in cache._staging.end_commit().items():
        seg = by_rowid.get(rowid)
        if seg is not None:
            for index in rows:
                seg.lengths.pop(index, None)
    cache._staging.finish(batch)
    cache._commit_done.notify_all()
    log.error("a group commit of staged blocks failed; its blocks were dropped")
