"""Group commit of staged blocks: many verified blocks, one fdatasync and one transaction.

Blocks from peers and from the origin are staged in the block cache (written, readable at
once) and committed here in batches from a worker thread, so the event loop never waits for
the disk to sync. A crash loses at most the last batch, and never makes anything unverified
visible: the cache only indexes synced data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from peerdistd.engine.ports import BlockStore

log = logging.getLogger(__name__)

COMMIT_DELAY = 0.05  # seconds a batch may gather
COMMIT_BYTES = 32 * 1024 * 1024  # commit at once past this many staged bytes


class GroupCommit:
    def __init__(self, store: BlockStore, delay: float = COMMIT_DELAY) -> None:
        self.store = store
        self.delay = delay
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        """Blocks were staged: make sure a commit follows soon."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while self.store.staged_bytes:
            if self.store.staged_bytes < COMMIT_BYTES:
                await asyncio.sleep(self.delay)
            try:
                await asyncio.to_thread(self.store.commit_staged)
            except Exception:
                log.exception("committing staged blocks failed; they stay uncommitted")
                return

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self.store.commit_staged)
