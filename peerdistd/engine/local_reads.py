"""Reads from the local cache: a block is served only under the reader's own block hash and
re-hashed on every read (docs/trust.md); a sequential reader's next range is read and
verified on a worker thread while the current answer is sent."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass

from peerdistd.engine.fresh import FreshBlocks
from peerdistd.engine.ports import BlockStore
from peerdistd.engine.view import ContentView
from peerdistd.proto.pccrc import BlockRef

log = logging.getLogger(__name__)

AHEAD_BYTES = 64 * 1024 * 1024  # bytes verified ahead for all readers together
AHEAD_HANDLES = 1024


@dataclass(frozen=True, slots=True)
class Used:
    """One block a local read took bytes from."""

    segment_id: bytes
    index: int
    length: int  # bytes of it in the read
    block_done: bool  # the read reached the block's end
    hash: bytes


@dataclass(frozen=True, slots=True)
class Ahead:
    view: ContentView
    offset: int
    max_bytes: int
    task: asyncio.Future[tuple[bytes, list[Used]]]


def _consume_exception(task: asyncio.Future[tuple[bytes, list[Used]]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("read-ahead failed: %s", task.exception())


class LocalReads:
    """Verified reads of the local cache, and the read-ahead of sequential readers."""

    def __init__(self, store: BlockStore, from_peers: OrderedDict[tuple[bytes, int], int]) -> None:
        self.store = store
        # Blocks fetched from peers that applications have not read all of yet, with the
        # bytes of each not read yet (marked by engine.fetching when it stages them).
        self._from_peers = from_peers
        self._ahead: dict[str, Ahead] = {}  # handle id -> its next range, being verified
        self._ahead_bytes = 0
        self.fresh = FreshBlocks()  # blocks fetched for reads, verified (engine.fresh)

    def local(self, view: ContentView, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """Consecutive cached bytes from ``offset`` (at most ``max_bytes``, within the range),
        and how many of them were fetched from peers and not read before."""
        data, used = self._gather(view, offset, max_bytes)
        return data, self._settle(used)

    def _gather(self, view: ContentView, offset: int, max_bytes: int) -> tuple[bytes, list[Used]]:
        """The cached bytes of :meth:`local` and the blocks they came from; thread-safe (the
        store locks), so a worker thread can verify the next stream read ahead of time."""
        limit = min(view.end, offset + max_bytes)
        parts: list[bytes | memoryview] = []
        used: list[Used] = []
        pos = offset
        refs = list(view.blocks_from(offset, limit))
        at = 0
        while at < len(refs) and pos < limit:
            first = refs[at]
            seg = first.segment
            fresh = self._fresh_bytes(first)
            if fresh is not None:
                # Verified under this reader's own hash moments ago (engine.fresh), and
                # still held under it: no pread, no second hash.
                start, stop = pos - first.start, min(first.end, limit) - first.start
                whole = (start, stop) == (0, len(fresh))
                parts.append(fresh if whole else memoryview(fresh)[start:stop])
                done = stop == len(fresh)
                used.append(Used(seg.segment_id, first.index, stop - start, done, first.hash))
                pos += stop - start
                at += 1
                continue
            # One run of consecutive blocks of one segment: one pread, each block re-hashed
            # against this reader's own block hash.
            run = [first]
            while (
                at + len(run) < len(refs)
                and refs[at + len(run)].segment is seg
                and self._fresh_bytes(refs[at + len(run)]) is None
            ):
                run.append(refs[at + len(run)])
            at += len(run)
            chunk = self.store.read_run(
                seg.segment_id, first.index, [r.hash for r in run], pos - first.start, limit - pos
            )
            for ref in run:
                got = min(ref.end, pos + len(chunk)) - max(ref.start, pos)
                if got <= 0:
                    break
                used.append(
                    Used(seg.segment_id, ref.index, got, pos + len(chunk) >= ref.end, ref.hash)
                )
            parts.append(chunk)
            pos += len(chunk)
            if pos < min(run[-1].end, limit):
                break  # a block not held (or failed): the read stops there
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        return bytes(data), used

    def _fresh_bytes(self, ref: BlockRef) -> bytes | None:
        """The block's bytes fetched and verified under ``ref.hash`` if the cache still
        holds it under that hash (emptied or evicted: read as not held, as from disk)."""
        data = self.fresh.get(ref.segment.segment_id, ref.index, ref.hash)
        if data is None or len(data) != ref.end - ref.start:
            return None
        if not self.store.has_block(ref.segment.segment_id, ref.index, expected=ref.hash):
            return None
        return data

    def _settle(self, used: list[Used]) -> int:
        """On the loop: LRU touches, and the bytes that peers supplied for this read."""
        peer_bytes = 0
        touched: set[bytes] = set()
        for u in used:
            touched.add(u.segment_id)
            key = (u.segment_id, u.index)
            if u.block_done:
                self.fresh.drop(u.segment_id, u.index)  # a reader took it whole: done
            left = self._from_peers.get(key)
            if left is not None:
                peer_bytes += u.length
                # Gone once all of it was read: a V2 segment may straddle two reads that
                # settle in either order (ending at the block's end is not enough).
                if left - u.length <= 0:
                    del self._from_peers[key]
                else:
                    self._from_peers[key] = left - u.length
        for seg_id in touched:
            self.store.touch(seg_id)
        return peer_bytes

    # -- verified read-ahead -------------------------------------------------------------
    # A sequential reader's next range is read and hashed on a worker thread while this
    # answer is sent (hashlib releases the GIL), so hashing on every read costs little
    # latency. Bytes verified ahead are served only if every block is still held under the
    # same hash when the read comes: never stale, never another reader's.

    def start_ahead(self, view: ContentView, handle: str, offset: int, max_bytes: int) -> None:
        """Read and verify ``[offset, offset + max_bytes)`` for the handle's next read."""
        self._drop_ahead(handle)
        if offset >= view.end:
            return
        first = view.block_at(offset)
        if first is not None and self.fresh.get(first.segment.segment_id, first.index, first.hash):
            return  # fetched and verified for this reader already: served from memory
        # Least recently read first out (closed handles' entries age out this way too).
        while self._ahead and (
            len(self._ahead) >= AHEAD_HANDLES or self._ahead_bytes + max_bytes > AHEAD_BYTES
        ):
            self._drop_ahead(next(iter(self._ahead)))
        task = asyncio.ensure_future(asyncio.to_thread(self._gather, view, offset, max_bytes))
        task.add_done_callback(_consume_exception)
        self._ahead[handle] = Ahead(view, offset, max_bytes, task)
        self._ahead_bytes += max_bytes

    def drop_ahead(self, handle: str) -> None:
        """The handle is closed: forget what was read ahead for it."""
        self._drop_ahead(handle)

    def _drop_ahead(self, handle: str) -> Ahead | None:
        ahead = self._ahead.pop(handle, None)
        if ahead is not None:
            self._ahead_bytes -= ahead.max_bytes
        return ahead

    async def take_ahead(
        self, view: ContentView, handle: str, offset: int, max_bytes: int
    ) -> tuple[bytes, int] | None:
        """What was verified ahead for exactly this read, if its blocks are all still held."""
        ahead = self._drop_ahead(handle)
        if ahead is None or ahead.view is not view:
            return None
        if (ahead.offset, ahead.max_bytes) != (offset, max_bytes):
            return None
        try:
            data, used = await ahead.task
        except Exception:  # the read below meets the same error and reports it
            return None
        if not data or not all(
            self.store.has_block(u.segment_id, u.index, expected=u.hash) for u in used
        ):
            return None  # dropped, evicted or replaced meanwhile: read it again
        return data, self._settle(used)
