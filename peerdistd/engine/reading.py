"""Reading content: from the local cache, else from peers within the timeout, else the
MISSING_DATA / TIMEOUT range the application must get from the origin (DESIGN.md,
"Read semantics" and "Reads are streams")."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from peerdistd import errors
from peerdistd.engine.events import EventBus
from peerdistd.engine.fetching import Fetcher
from peerdistd.engine.flight import Outcome, Piece, SingleFlight
from peerdistd.engine.local_reads import LocalReads
from peerdistd.engine.loop_lag import LoopLag
from peerdistd.engine.ports import BlockStore, PeerNetwork
from peerdistd.engine.read_ahead import READ_AHEAD_BYTES, ReadAhead
from peerdistd.engine.slots import SlotPool
from peerdistd.engine.stats import Counters
from peerdistd.engine.view import ContentView
from peerdistd.errors import PeerUnavailable
from peerdistd.proto.pccrc import BlockRef

# How long a fetch started by another node's DONE may take (its retries end there).
DONE_FETCH_SECONDS = 5.0
# Pieces fetched because of other nodes' DONEs at once: with every DONE fetched by every
# node, ten nodes at once on two cores starved their own origin ranges, claims ran out
# without progress and the WAN carried 1.67 copies (docs/benchmarks.md, "Fetched on DONE").
DONE_PIECES = 2


@dataclass(frozen=True, slots=True)
class ReadRequest:
    handle: str
    read_id: str
    offset: int
    max_bytes: int
    timeout: float  # seconds; 0 = local cache only
    flags: frozenset[str]


class BlockReader:
    """Serves reads for every handle; shares peer fetches between concurrent readers."""

    def __init__(
        self,
        store: BlockStore,
        peers: PeerNetwork,
        slots: SlotPool,
        stats: Counters,
        events: EventBus,
        spawn: Callable[[asyncio.Future[Any]], None],
        staged: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.peers = peers
        self.slots = slots
        self.stats = stats
        self.events = events
        # Blocks fetched from peers and not read yet: the fetcher marks them, the local reads
        # settle them (engine.fetching says why they are counted apart).
        from_peers: OrderedDict[tuple[bytes, int], int] = OrderedDict()
        self.locals = LocalReads(store, from_peers)
        self.fetcher = Fetcher(
            store, peers, slots, stats, spawn, staged, from_peers, self.locals.fresh
        )
        self.ahead = ReadAhead(peers, slots, stats, self.fetcher, spawn)
        self.flight: SingleFlight | None = None  # single flight across the branch, if on

        self.reads_queued = 0  # reads waiting for a transfer slot (here or at their peers)
        self.done_pieces = 0  # pieces being fetched because another node said DONE
        self.lag = LoopLag(spawn)

    # -- local cache ---------------------------------------------------------------------

    def local(self, view: ContentView, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """Consecutive cached bytes from ``offset`` (at most ``max_bytes``, within the range),
        and how many of them were fetched from peers and not read before."""
        return self.locals.local(view, offset, max_bytes)

    def drop_ahead(self, handle: str) -> None:
        """The handle is closed: forget what was read ahead for it."""
        self.locals.drop_ahead(handle)

    def _account(self, data: bytes, peer_bytes: int) -> None:
        """Bytes by source; a read counts as a hit only if nothing in it came from peers."""
        self._count_bytes(data, peer_bytes)
        if peer_bytes:
            self.stats.cache_misses += 1
        else:
            self.stats.cache_hits += 1

    def _count_bytes(self, data: bytes, peer_bytes: int) -> None:
        """Bytes a read returned, by source (BranchCache's counters)."""
        self.stats.bytes_from_peers += peer_bytes
        self.stats.bytes_from_cache += len(data) - peer_bytes

    def _runs(
        self, view: ContentView, offset: int, stop_if_local: bool, located: Mapping[bytes, int]
    ) -> int:
        """Length from ``offset`` over blocks that are local (``stop_if_local`` False) or over
        blocks neither local nor held by a located peer (True), clipped to the range end."""
        pos = offset
        for seg in view.segments:
            seg_end = seg.offset + seg.length
            if seg_end <= pos:
                continue
            if seg.offset > pos:  # a stretch no content information describes yet
                if not stop_if_local:
                    return pos - offset
                pos = seg.offset
            if pos >= view.end:
                break
            if stop_if_local and seg.segment_id in located:
                return pos - offset
            held = self.store.matching_blocks(seg.segment_id, seg.block_hashes)
            first = (pos - seg.offset) // seg.block_size
            for index in range(first, seg.block_count):
                b_start, b_end = seg.block_span(index)
                if b_start >= view.end:
                    return view.end - offset
                if (index in held) == stop_if_local:
                    return max(b_start, offset) - offset
                pos = b_end
        if not stop_if_local and pos < view.end:
            return min(pos, view.end) - offset
        return max(0, view.end - offset)

    def available(self, view: ContentView, offset: int) -> int:
        """Consecutive bytes in the local cache at ``offset`` (the ``max=0`` query)."""
        if offset >= view.end:
            return 0
        return min(self._runs(view, offset, False, {}), view.end - offset)

    def missing(self, view: ContentView, offset: int, located: Mapping[bytes, int]) -> int:
        """Length of the range at ``offset`` that is neither local nor found on peers."""
        return max(1, min(self._runs(view, offset, True, located), view.end - offset))

    # -- reads ---------------------------------------------------------------------------

    async def read(self, view: ContentView, req: ReadRequest) -> tuple[bytes, int]:
        """Bytes at ``req.offset`` (at least one) and how many of them came from peers;
        or MissingData / Timeout / StreamLimit."""
        ahead = await self.locals.take_ahead(view, req.handle, req.offset, req.max_bytes)
        data, peer_bytes = ahead or self.local(view, req.offset, req.max_bytes)
        if data:
            self._account(data, peer_bytes)
            self._start_complete(req, peer_accepted=False)
            if len(data) == req.max_bytes:
                self.locals.start_ahead(view, req.handle, req.offset + len(data), req.max_bytes)
            if peer_bytes and req.timeout > 0:
                # A sequential reader is consuming what peers sent: keep the pipe full.
                self.ahead.locate_ahead(view, req.offset + len(data), req.timeout)
            return data, peer_bytes
        self.stats.cache_misses += 1  # nothing local at the offset: a miss, however it ends
        first = view.block_at(req.offset)
        if req.timeout <= 0 or first is None:
            # Local only, or not described yet: no peer traffic, only the origin can help.
            self._start_complete(req, peer_accepted=False)
            raise errors.MissingData(req.offset, self.missing(view, req.offset, {}))
        return await self._read_from_peers(view, req, first)

    async def _read_from_peers(
        self, view: ContentView, req: ReadRequest, first: BlockRef
    ) -> tuple[bytes, int]:
        deadline = time.monotonic() + req.timeout
        key = (first.segment.segment_id, first.index)
        task = self.fetcher.in_flight(key)
        shared = False  # whether ours is a block of a run another read started
        if task is None:
            # Neither held nor on its way: what read-ahead fetched may be gone (flushed,
            # evicted, failed).
            self.ahead.forget_mark(view)
            # Like a QUIC stream start: START_COMPLETE at once, saying whether the window had a
            # slot (here, and at a peer holding the block); a queued read hears PEER_ACCEPTED
            # when it gets one, if it asked to.
            seg_id = first.segment.segment_id
            if not self.peers.at_limit(seg_id) and self.slots.try_acquire():
                self._start_complete(req, peer_accepted=True)
            elif "fail_blocked" in req.flags:
                self._start_complete(req, False, status="STREAM_LIMIT_REACHED")
                raise errors.StreamLimitReached("no transfer slot is free")
            else:
                self._start_complete(req, peer_accepted=False)
                try:
                    await self._queue(seg_id, deadline)
                except TimeoutError:
                    raise errors.Timeout(req.offset, self.missing(view, req.offset, {})) from None
                if "indicate_peer_accept" in req.flags:
                    self.events.publish("PEER_ACCEPTED", handle=req.handle, read_id=req.read_id)
            remaining = deadline - time.monotonic()
            try:
                located = await self.ahead.locate(view, req.offset, remaining)
            except BaseException:
                self.slots.release()
                raise
            if first.segment.segment_id not in located:
                self.slots.release()
                return await self._unheld(view, req, first, deadline, located)
            # The read's own blocks go as one run on its slot; read-ahead takes slots of its
            # own (none free: no read-ahead), as before runs.
            run = self.ahead.run_from(view, first, req.offset + req.max_bytes, located)
            task = self.fetcher.start(view, run, deadline, holds_slot=True)
            ahead = max(req.offset + req.max_bytes, first.end + READ_AHEAD_BYTES)
            self.ahead.fetch_ahead(view, run[-1].end, ahead, located, deadline)
        else:
            self._start_complete(req, peer_accepted=True)
            located = {first.segment.segment_id: 1}
            shared = True
        got = await self._settled(view, req, task, deadline)
        if key not in got and shared and time.monotonic() < deadline:
            # Ours was a later block of another read's run, and the run left it out: its
            # holder was slow or busy for it, or failed (fetch_run gives up only on a run's
            # first block). Ask for ours alone once before saying that nobody holds it.
            retry = self.fetcher.in_flight(key) or self.fetcher.start(
                view, [first], deadline, holds_slot=False
            )
            got = await self._settled(view, req, retry, deadline)
        if key not in got:
            others = {k: v for k, v in located.items() if k != first.segment.segment_id}
            return await self._unheld(view, req, first, deadline, others)
        data, peer_bytes = self.local(view, req.offset, req.max_bytes)
        if not data:  # evicted in between: practically impossible, but never lie
            raise errors.Timeout(req.offset, self.missing(view, req.offset, {}))
        self._count_bytes(data, peer_bytes)  # the miss was counted when the read began
        return data, peer_bytes

    async def _settled(
        self,
        view: ContentView,
        req: ReadRequest,
        task: asyncio.Task[frozenset[tuple[bytes, int]]],
        deadline: float,
    ) -> frozenset[tuple[bytes, int]]:
        """The blocks ``task`` fetched; TIMEOUT if it is not done by the read's deadline."""
        remaining = max(0.0, deadline - time.monotonic())
        try:
            return await asyncio.wait_for(asyncio.shield(task), remaining)
        except (TimeoutError, PeerUnavailable):
            raise errors.Timeout(req.offset, self.missing(view, req.offset, {})) from None

    async def _unheld(
        self,
        view: ContentView,
        req: ReadRequest,
        first: BlockRef,
        deadline: float,
        located: Mapping[bytes, int],
    ) -> tuple[bytes, int]:
        """No peer is known to hold the block at the offset. With single flight, the nodes
        of the branch agree who fetches its piece from the origin (docs/single-flight.md):
        MISSING_DATA for exactly that piece if it is ours, else wait (never past the read's
        deadline) for the node that fetches it and take the blocks from it."""
        missing = self.missing(view, req.offset, located)
        if self.flight is None:
            raise errors.MissingData(req.offset, missing)
        for _attempt in range(3):
            decision = await self.flight.decide(
                view, first, deadline, req.handle, claim="no_claim" not in req.flags
            )
            if decision is None:
                break
            clipped = max(1, min(missing, decision.piece.end - req.offset))
            if decision.outcome is Outcome.MINE or decision.outcome is Outcome.FREE:
                raise errors.MissingData(req.offset, clipped)
            if decision.outcome is Outcome.TIMEOUT:
                raise errors.Timeout(req.offset, clipped)
            if decision.outcome is Outcome.HELD:
                holds = self._held_whole_by(decision.piece, decision.endpoint)
                key = (first.segment.segment_id, first.index)
                run = (
                    [first]
                    if self.fetcher.in_flight(key) is not None
                    else self.ahead.run_from(view, first, decision.piece.end, holds)
                )
                task = self.fetcher.in_flight(key) or self.fetcher.start(
                    view, run, deadline, holds_slot=False
                )
                self.ahead.fetch_ahead(view, run[-1].end, decision.piece.end, holds, deadline)
                remaining = max(0.0, deadline - time.monotonic())
                try:
                    got = await asyncio.wait_for(asyncio.shield(task), remaining)
                except (TimeoutError, PeerUnavailable):
                    raise errors.Timeout(req.offset, clipped) from None
                if key not in got:  # it no longer has it: the piece is free again
                    self.flight.forget(decision.piece)
                    continue
            data, peer_bytes = self.local(view, req.offset, req.max_bytes)
            if data:
                self._count_bytes(data, peer_bytes)
                return data, peer_bytes
        raise errors.MissingData(req.offset, missing)

    def _held_whole_by(self, piece: Piece, endpoint: str) -> dict[bytes, int]:
        """The node at ``endpoint`` holds ``piece`` whole (its DONE): tell the peer network,
        and return the piece's segments as located there, for runs."""
        holds = {sid: 1 for sid, _index, _start in piece.blocks}
        self.peers.add_holder(list(holds), endpoint)
        return holds

    def fetch_done_piece(self, view: ContentView, piece: Piece, endpoint: str) -> None:
        """Another node has ``piece`` whole (its DONE) and a handle reads ``view`` whole:
        fetch the blocks not here yet from it, in runs, while transfer slots are free (those
        that find none are fetched when the application reads them). A node then follows
        the branch's origin fetches as they finish instead of as its reads reach them. Not
        while its loop runs late (:mod:`peerdistd.engine.loop_lag`): the work is optional."""
        if self.done_pieces >= DONE_PIECES or self.lag.busy():
            return
        holds = self._held_whole_by(piece, endpoint)
        deadline = time.monotonic() + DONE_FETCH_SECONDS
        self.ahead.fetch_ahead(view, piece.start, piece.end, holds, deadline)
        tasks = {
            task
            for sid, index, _start in piece.blocks
            if (task := self.fetcher.in_flight((sid, index))) is not None
        }
        if not tasks:
            return
        self.done_pieces += 1
        left = len(tasks)

        def one_done(_task: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0:
                self.done_pieces -= 1

        for task in tasks:
            task.add_done_callback(one_done)

    async def _queue(self, segment_id: bytes, deadline: float) -> None:
        """Wait, first-in first-out, until a peer holding the segment may have an upload slot
        for us and a slot of our own is free; the slot is then held. TimeoutError at the
        deadline. No slot of ours is held while the peers are at their limit."""

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        self.reads_queued += 1
        try:
            await self.peers.slot_freed(segment_id, timeout=left())
            await self.slots.acquire(left())
            while self.peers.at_limit(segment_id):  # the peers filled up while we queued here
                self.slots.release()
                await self.peers.slot_freed(segment_id, timeout=left())
                await self.slots.requeue(left())
        finally:
            self.reads_queued -= 1

    def _start_complete(self, req: ReadRequest, peer_accepted: bool, status: str = "OK") -> None:
        self.events.publish(
            "START_COMPLETE",
            handle=req.handle,
            read_id=req.read_id,
            status=status,
            peer_accepted=peer_accepted,
        )
