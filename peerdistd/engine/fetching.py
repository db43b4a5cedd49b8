"""Fetching blocks from peers for reads and read-ahead: one task per run of blocks, shared
by every read that wants one of them; the verified blocks staged in the cache and handed to
the read that asked (DESIGN.md, "Reads are streams"; docs/benchmarks.md, "LAN speed")."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from peerdistd.engine.fresh import FreshBlocks
from peerdistd.engine.ports import BlockStore, PeerNetwork
from peerdistd.engine.slots import SlotPool
from peerdistd.engine.stats import Counters
from peerdistd.engine.view import ContentView
from peerdistd.errors import PeersBusy, PeerUnavailable
from peerdistd.proto.pccrc import BlockRef
from peerdistd.store.blockcache import SegmentRecord
from peerdistd.store.cache_types import StagedSegment

FROM_PEERS_LIMIT = 65536  # blocks remembered as "fetched for a read, not read yet"

Key = tuple[bytes, int]  # (segment id, block index)
FetchTask = asyncio.Task[frozenset[Key]]


def full_list(view: ContentView, ref: BlockRef) -> tuple[bytes, ...] | None:
    """The segment's block hashes if the view has all of them (then they hash to its HoD:
    view.py checks it), which proves them to the cache; None for a range's partial list."""
    seg = ref.segment
    if view.version != 1 or len(seg.block_hashes) != seg.block_count:
        return None
    return seg.block_hashes


def segment_record(view: ContentView, ref: BlockRef) -> SegmentRecord:
    seg = ref.segment
    return SegmentRecord(
        segment_id=seg.segment_id,
        version=view.version,
        algorithm=view.algorithm.value,
        hod=seg.hod,
        secret=seg.secret,
        length=seg.length,
        block_size=seg.block_size,
    )


def staged(
    view: ContentView, blocks: Sequence[tuple[BlockRef, bytes | memoryview]]
) -> StagedSegment:
    """Verified blocks of one segment of ``view`` as :meth:`BlockStore.stage` takes them."""
    first = blocks[0][0]
    rows = [(ref.index, data, ref.hash) for ref, data in blocks]
    return segment_record(view, first), full_list(view, first), rows


class Fetcher:
    """Runs of blocks on their way from peers, and what becomes of them when they come."""

    def __init__(
        self,
        store: BlockStore,
        peers: PeerNetwork,
        slots: SlotPool,
        stats: Counters,
        spawn: Callable[[asyncio.Future[Any]], None],
        staged: Callable[[], None],
        from_peers: OrderedDict[Key, int],
        fresh: FreshBlocks,
    ) -> None:
        self.store = store
        self.peers = peers
        self.slots = slots
        self.stats = stats
        self._spawn = spawn
        self._staged = staged
        # Blocks fetched from peers that no application has read yet, marked here and settled
        # by the local reads (LocalReads): their bytes count as "from peers", not "from
        # cache", when they are read (BranchCache's counters are about what applications
        # got, and read-ahead must not blur them).
        self._from_peers = from_peers
        self._fresh = fresh
        # Block -> the task fetching the run it is part of; the task's result is the set of
        # blocks of the run that were fetched and stored.
        self._inflight: dict[Key, FetchTask] = {}
        self.fetches_waiting = 0  # fetches whose peers answered busy, waiting to ask again

    def in_flight(self, key: Key) -> FetchTask | None:
        """The task fetching the block ``key``, if one is."""
        return self._inflight.get(key)

    def wanted(self, ref: BlockRef) -> bool:
        """Neither being fetched nor held."""
        key = (ref.segment.segment_id, ref.index)
        if key in self._inflight or key in self._from_peers:  # cheap checks before the store
            return False
        return not self.store.has_block(*key, expected=ref.hash)

    def start(
        self, view: ContentView, run: list[BlockRef], deadline: float, holds_slot: bool
    ) -> FetchTask:
        """Fetch ``run`` in the background; ``holds_slot``: the fetch releases a slot taken
        for it when it ends."""
        keys = [(ref.segment.segment_id, ref.index) for ref in run]
        task = asyncio.ensure_future(self._fetch(view, run, deadline, holds_slot))
        for key in keys:
            self._inflight[key] = task

        def done(_t: object) -> None:
            for key in keys:
                if self._inflight.get(key) is task:
                    del self._inflight[key]

        task.add_done_callback(done)
        self._spawn(task)
        return task

    async def _fetch(
        self, view: ContentView, run: list[BlockRef], deadline: float, holds_slot: bool
    ) -> frozenset[Key]:
        """Fetch ``run`` (consecutive blocks of one content) and stage what came, one store
        call per segment; the blocks that came."""
        try:
            while True:
                timeout = max(0.0, deadline - time.monotonic())
                try:
                    if len(run) == 1:
                        found = [await self.peers.fetch(run[0], view.algorithm, timeout=timeout)]
                    else:
                        found = await self.peers.fetch_run(run, view.algorithm, timeout=timeout)
                    break
                except PeersBusy as busy:
                    # The peers are at their upload limit: wait for one of their slots to
                    # free holding none of ours; a fetch that had one of ours takes it again,
                    # ahead of later reads. (One that had none, a read's retry or a fetch from
                    # the node single flight named, failed here at once: its read answered
                    # TIMEOUT and its application soon went to the origin for data a peer
                    # held.)
                    had_slot = holds_slot
                    if holds_slot:
                        holds_slot = False
                        self.slots.release()
                    # Only the busy holders' slots count: one that lacks the block may have
                    # free slots, and waiting on it returned at once, a loop that spun
                    # until the deadline (a fifth of the CPU of ten nodes at once).
                    await self._wait_for_peers(
                        run[0].segment.segment_id, deadline, take_slot=had_slot, among=busy.peers
                    )
                    holds_slot = had_slot
            got = [(ref, data) for ref, data in zip(run, found, strict=True) if data is not None]
            if not got:
                return frozenset()
            # Marked before they become readable, so a read that finds them counts them as
            # from peers; unmarked again if staging fails.
            for ref, _ in got:
                self._from_peers[(ref.segment.segment_id, ref.index)] = ref.end - ref.start
            try:
                groups = _by_segment(got)
                if len(groups) == 1:
                    # On the loop: a worker thread here cost more in wake-ups than the write
                    # (docs/benchmarks.md, LAN speed); decryption and hashing have their own.
                    self._stage_all(view, groups)
                else:
                    # A run across segments (V2) creates a file and an index row per segment:
                    # file-system work that would stall the loop (docs/benchmarks.md, V2).
                    await asyncio.to_thread(self._stage_all, view, groups)
            except BaseException:
                for ref, _ in got:
                    self._from_peers.pop((ref.segment.segment_id, ref.index), None)
                raise
            self._staged()
            # Verified against these very hashes (net.swarm): the read that asked for them
            # takes them from memory instead of the cache file (engine.fresh).
            for seg_refs in groups:
                seg_id = seg_refs[0][0].segment.segment_id
                self._fresh.add(seg_id, ((r.index, data, r.hash) for r, data in seg_refs))
            for _, data in got:
                self.stats.peer_bytes_fetched += len(data)
            while len(self._from_peers) > FROM_PEERS_LIMIT:
                self._from_peers.popitem(last=False)
            return frozenset((ref.segment.segment_id, ref.index) for ref, _ in got)
        finally:
            if holds_slot:
                self.slots.release()

    def _stage_all(self, view: ContentView, groups: list[list[tuple[BlockRef, bytes]]]) -> None:
        """Stage the verified blocks of a run in one store call (thread-safe)."""
        self.store.stage([staged(view, seg_refs) for seg_refs in groups])

    async def _wait_for_peers(
        self, segment_id: bytes, deadline: float, *, take_slot: bool, among: Sequence[str] = ()
    ) -> None:
        """A fetch whose peers answered busy: returns once one of theirs frees (and, with
        ``take_slot``, once it has one of ours again)."""
        self.fetches_waiting += 1
        try:
            left = max(0.0, deadline - time.monotonic())
            await self.peers.slot_freed(segment_id, timeout=left, among=among)
            if take_slot:
                await self.slots.requeue(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise PeerUnavailable("every peer holding the block stayed at its limit") from None
        finally:
            self.fetches_waiting -= 1


def _by_segment(got: list[tuple[BlockRef, bytes]]) -> list[list[tuple[BlockRef, bytes]]]:
    """Consecutive blocks of a run grouped by segment, in order."""
    groups: list[list[tuple[BlockRef, bytes]]] = []
    for item in got:
        if groups and groups[-1][0][0].segment is item[0].segment:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups
