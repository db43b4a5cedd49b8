"""Group commit of staged blocks: many verified blocks, one fdatasync and one transaction.

Blocks from publish, add-data, peers and the origin are staged in the block cache (written,
readable at once) and committed here in batches from a worker thread, so the event loop never
waits for the disk. One commit runs at a time; the next batch gathers while it syncs.

A request that must not be acknowledged before its blocks are on stable storage (publish's 201,
add-data's 200) calls :meth:`GroupCommit.durable` after staging them: it takes the cache's
ticket (the batch that holds its blocks) and waits until that batch is committed, asking for a
commit at once rather than after the gathering delay. Blocks nobody waits for (from peers)
are committed after ``delay``: a crash may lose them, never anything acknowledged, and never
makes anything unsynced visible (the cache only indexes synced data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from peerdistd import errors
from peerdistd.engine.ports import BlockStore

log = logging.getLogger(__name__)

COMMIT_DELAY = 0.05  # seconds a batch nobody waits for may gather
COMMIT_BYTES = 32 * 1024 * 1024  # commit at once past this many staged bytes


class GroupCommit:
    def __init__(self, store: BlockStore, delay: float = COMMIT_DELAY) -> None:
        self.store = store
        self.delay = delay
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._urgent = asyncio.Event()  # someone waits: commit now
        self._closed = False

    def kick(self) -> None:
        """Blocks were staged: make sure a commit follows soon."""
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.ensure_future(self._run())

    def failures(self) -> int:
        """Take this before staging; hand it to :meth:`durable`."""
        return self.store.commit_failures

    async def durable(self, failures: int) -> None:
        """Return once every block staged so far (by this request) is synced and indexed.

        ``failures`` is :meth:`failures` taken before the request staged anything: a commit
        that failed since may have held its blocks (they were dropped), so the request fails.
        """
        ticket = self.store.staging_ticket()
        while True:
            if self.store.commit_failures != failures:
                raise errors.ServiceUnavailable(
                    "the block cache could not make the data durable (see the daemon's log)"
                )
            if self.store.committed_batch >= ticket:
                return
            if self._closed:
                raise errors.ServiceUnavailable("the daemon stopped before the data was durable")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            self._urgent.set()
            self.kick()
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def _run(self) -> None:
        while self._waiters or self.store.staged_bytes:
            if not self._waiters and self.store.staged_bytes < COMMIT_BYTES:
                self._urgent.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.delay)
            try:
                await asyncio.to_thread(self.store.commit_staged)
            except Exception:
                log.exception("committing staged blocks failed; they were dropped")
            finally:
                # Every waiter checks again (those that came during the commit too): done,
                # failed, or it waits for the next batch.
                waiting, self._waiters = self._waiters, []
                for waiter in waiting:
                    if not waiter.done():
                        waiter.set_result(None)

    async def aclose(self) -> None:
        """Commit what is staged; then answer every waiter (committed, or the daemon stops)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.to_thread(self.store.commit_staged)
        finally:
            self._closed = True
            waiting, self._waiters = self._waiters, []
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)
