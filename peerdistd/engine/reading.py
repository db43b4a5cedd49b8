"""Reading content: from the local cache, else from peers within the timeout, else the
MISSING_DATA / TIMEOUT range the application must get from the origin (DESIGN.md,
"Read semantics" and "Reads are streams")."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from peerdistd import errors
from peerdistd.engine.events import EventBus
from peerdistd.engine.fetching import Fetcher
from peerdistd.engine.flight import Outcome, SingleFlight
from peerdistd.engine.local_reads import LocalReads
from peerdistd.engine.ports import BlockStore, PeerNetwork
from peerdistd.engine.slots import SlotPool
from peerdistd.engine.stats import Counters
from peerdistd.engine.view import ContentView
from peerdistd.errors import PeerUnavailable
from peerdistd.proto.pccrc import BlockRef
from peerdistd.proto.pccrr import RUN_BYTES, RUN_LIMIT

log = logging.getLogger(__name__)

# How many segments one discovery round asks about, and how many blocks a missed read
# fetches ahead (bounded again by the slot pool): enough to keep a peer link busy.
LOCATE_SEGMENTS = 32
LOCATE_AHEAD = 4  # batches of LOCATE_SEGMENTS asked about ahead of a window (V2: ~16 MiB)
HINT_AGAIN = 2.0  # seconds before the same batch is asked about ahead again
HINTED_LIMIT = 4096  # segments remembered as asked about ahead
READ_AHEAD_BLOCKS = 128
READ_AHEAD_BYTES = 8 * 1024 * 1024  # how far ahead of a sequential peer reader to fetch
AHEAD_MARKS = 1024  # contents whose read-ahead position is remembered
RUN_BLOCKS = RUN_LIMIT  # consecutive blocks fetched as one run (net.swarm_runs)
# A run may go on into the next segment of the content when that one is located too: a V2
# segment is one block, so runs within a segment would be single blocks (net.swarm_runs).


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
        self._spawn = spawn
        # Blocks fetched from peers and not read yet: the fetcher marks them, the local reads
        # settle them (engine.fetching says why they are counted apart).
        from_peers: OrderedDict[tuple[bytes, int], int] = OrderedDict()
        self.locals = LocalReads(store, from_peers)
        self.fetcher = Fetcher(
            store, peers, slots, stats, spawn, staged, from_peers, self.locals.fresh
        )
        # Read-ahead behind local hits locates in the background, one window per content at a
        # time (keyed by the window's first segment).
        self._ahead: dict[bytes, asyncio.Task[bool]] = {}
        # Per content: where the background read-ahead stopped (_locate_ahead).
        self._ahead_marks: OrderedDict[tuple[bytes, int, int], int] = OrderedDict()
        self._hinted: OrderedDict[bytes, float] = OrderedDict()  # segment id -> ask again at
        self.flight: SingleFlight | None = None  # single flight across the branch, if on

        self.reads_queued = 0  # reads waiting for a transfer slot (here or at their peers)

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
        self.stats.bytes_from_peers += peer_bytes
        self.stats.bytes_from_cache += len(data) - peer_bytes
        if peer_bytes:
            self.stats.cache_misses += 1
        else:
            self.stats.cache_hits += 1

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
                self._locate_ahead(view, req.offset + len(data), req.timeout)
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
            # evicted, failed); the next read-ahead checks every block again.
            self._ahead_marks.pop(_mark_key(view), None)
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
                located = await self._locate(view, req.offset, remaining)
            except BaseException:
                self.slots.release()
                raise
            if first.segment.segment_id not in located:
                self.slots.release()
                return await self._unheld(view, req, first, deadline, located)
            # The read's own blocks go as one run on its slot; read-ahead takes slots of its
            # own (none free: no read-ahead), as before runs.
            run = self._run_from(view, first, req.offset + req.max_bytes, located)
            task = self.fetcher.start(view, run, deadline, holds_slot=True)
            ahead = max(req.offset + req.max_bytes, first.end + READ_AHEAD_BYTES)
            self._read_ahead(view, run[-1].end, ahead, located, deadline)
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
        self.stats.bytes_from_peers += peer_bytes  # the miss was counted when the read began
        self.stats.bytes_from_cache += len(data) - peer_bytes
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
            decision = await self.flight.decide(view, first, deadline, req.handle)
            if decision is None:
                break
            clipped = max(1, min(missing, decision.piece.end - req.offset))
            if decision.outcome is Outcome.MINE:
                raise errors.MissingData(req.offset, clipped)
            if decision.outcome is Outcome.TIMEOUT:
                raise errors.Timeout(req.offset, clipped)
            if decision.outcome is Outcome.HELD:
                holds = {sid: 1 for sid, _i, _s in decision.piece.blocks}
                self.peers.add_holder(list(holds), decision.endpoint)
                key = (first.segment.segment_id, first.index)
                run = (
                    [first]
                    if self.fetcher.in_flight(key) is not None
                    else self._run_from(view, first, decision.piece.end, holds)
                )
                task = self.fetcher.in_flight(key) or self.fetcher.start(
                    view, run, deadline, holds_slot=False
                )
                self._read_ahead(view, run[-1].end, decision.piece.end, holds, deadline)
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
                self.stats.bytes_from_peers += peer_bytes
                self.stats.bytes_from_cache += len(data) - peer_bytes
                return data, peer_bytes
        raise errors.MissingData(req.offset, missing)

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

    async def _locate(
        self, view: ContentView, offset: int, timeout: float, *, count: bool = True
    ) -> Mapping[bytes, int]:
        """Holders of the segments from ``offset``. ``count``: a read that had to look for
        peers (BranchCache's discovery attempts); a read-ahead's background lookup is not."""
        wanted = self.hint(view, offset)

        def probed(found: bool) -> None:
            # Only a read that waited for a discovery round counts (BranchCache's attempted
            # discoveries): holders the directory knew or guessed cost no datagram.
            if count:
                self.stats.discovery_attempts += 1
                self.stats.discovery_successes += int(found)

        return await self.peers.locate(wanted, timeout=max(0.0, timeout), probed=probed)

    def _locate_ahead(self, view: ContentView, start: int, timeout: float) -> None:
        """Keep a sequential reader's pipe full without holding up its read: locate the next
        window (the peer network answers at once for segments it knows or can guess) and
        fetch ahead of ``start`` what peers hold."""
        first = view.block_at(start)
        if first is None or first.segment.segment_id in self._ahead:
            return
        key = first.segment.segment_id
        deadline = time.monotonic() + timeout

        async def ahead() -> bool:
            located = await self._locate(view, start, timeout, count=False)
            # From where the last read-ahead of this content stopped: every block before it
            # is held or on its way, and checking each again cost the loop a store call per
            # block per read (V2: a hundred segments per 8 MiB).
            mark = _mark_key(view)
            begin = max(start, self._ahead_marks.get(mark, start))
            if begin < start + READ_AHEAD_BYTES:
                reached = self._read_ahead(view, begin, start + READ_AHEAD_BYTES, located, deadline)
                self._ahead_marks[mark] = reached
                self._ahead_marks.move_to_end(mark)
                while len(self._ahead_marks) > AHEAD_MARKS:
                    self._ahead_marks.popitem(last=False)
            return bool(located)

        task = asyncio.ensure_future(ahead())
        self._ahead[key] = task
        task.add_done_callback(lambda _t: self._ahead.pop(key, None))
        self._spawn(task)

    def hint(self, view: ContentView, offset: int, *, reading: bool = True) -> list[bytes]:
        """The segments a read at ``offset`` asks about, after starting discovery, off the
        read's path, for the next ones (answers, "nobody" too, are remembered a while): with
        V2's small segments a reader would otherwise wait a discovery window every few MiB.
        Each segment is asked about once while its answer is fresh, never a whole content at
        once (a large V2 content has thousands of segments). ``reading`` False (the
        ``immediate`` open flag): ask about the first ones too."""
        # A window is the segments of the read-ahead (V2: 64 segments of 128 KiB), at least
        # LOCATE_SEGMENTS, so read-ahead never waits for the next window to be located.
        window = max(LOCATE_SEGMENTS, len(view.segment_ids(offset, offset + READ_AHEAD_BYTES)))
        # Ahead of it, LOCATE_AHEAD batches as before: more probes at a content's start
        # (before any peer served it) would only add datagrams.
        ids = view.segment_ids(offset, view.end)[: window + LOCATE_AHEAD * LOCATE_SEGMENTS]
        wanted = ids[:window]
        now = time.monotonic()
        if reading:
            for sid in wanted:  # asked about by the read itself
                self._hinted[sid] = now + HINT_AGAIN
        later = ids[window:] if reading else ids
        fresh = [sid for sid in later if self._hinted.get(sid, 0.0) <= now]
        for sid in fresh:
            self._hinted[sid] = now + HINT_AGAIN
            self._hinted.move_to_end(sid)
        while len(self._hinted) > HINTED_LIMIT:
            self._hinted.popitem(last=False)
        # Led by the content's first segment: the peer network links the windows of one
        # content by it, so the peers that served its earlier segments are asked first for
        # the later ones, without a discovery round (PeerNetwork.locate).
        lead = view.segments[0].segment_id
        if fresh:
            self.peers.prefetch_hint(list(dict.fromkeys([lead, *fresh])))
        return list(dict.fromkeys([lead, *wanted]))

    def _run_from(
        self, view: ContentView, first: BlockRef, end: int, located: Mapping[bytes, int]
    ) -> list[BlockRef]:
        """``first`` and the wanted blocks right after it (before ``end``), into the next
        segments if they are ``located``: one run, fetched in one exchange."""
        run = [first]
        size = first.end - first.start
        for ref in view.blocks_from(first.end, min(end, view.end)):
            if not self._extends(run, size, ref, located) or not self.fetcher.wanted(ref):
                break
            run.append(ref)
            size += ref.end - ref.start
        return run

    @staticmethod
    def _extends(
        run: list[BlockRef], size: int, ref: BlockRef, located: Mapping[bytes, int]
    ) -> bool:
        """Whether ``ref`` (the block after ``run``, of ``size`` bytes) may join the run."""
        if len(run) >= RUN_BLOCKS or size + ref.end - ref.start > RUN_BYTES:
            return False
        return ref.segment is run[-1].segment or ref.segment.segment_id in located

    def _read_ahead(
        self, view: ContentView, start: int, end: int, located: Mapping[bytes, int], deadline: float
    ) -> int:
        """Fetch what located peers hold in ``[start, end)``, in runs, while slots are free;
        returns the offset before which every block is held or on its way."""
        run: list[BlockRef] = []
        size = 0
        gap: int | None = None  # the first block neither held nor on its way
        pos = start
        for count, ref in enumerate(view.blocks_from(start, min(end, view.end))):
            if count >= READ_AHEAD_BLOCKS:
                break
            pos = ref.end
            here = ref.segment.segment_id in located
            wanted = here and self.fetcher.wanted(ref)
            if not here and gap is None:
                gap = ref.start
            if run and (not wanted or not self._extends(run, size, ref, located)):
                if not self.slots.try_acquire():
                    return run[0].start if gap is None else min(gap, run[0].start)
                self.fetcher.start(view, run, deadline, holds_slot=True)
                run, size = [], 0
            if wanted:
                run.append(ref)
                size += ref.end - ref.start
        if run and not self.slots.try_acquire():
            return run[0].start if gap is None else min(gap, run[0].start)
        if run:
            self.fetcher.start(view, run, deadline, holds_slot=True)
        return pos if gap is None else gap

    def _start_complete(self, req: ReadRequest, peer_accepted: bool, status: str = "OK") -> None:
        self.events.publish(
            "START_COMPLETE",
            handle=req.handle,
            read_id=req.read_id,
            status=status,
            peer_accepted=peer_accepted,
        )


def _mark_key(view: ContentView) -> tuple[bytes, int, int]:
    """A content range, for remembering its read-ahead position (hashing a view would hash
    every segment)."""
    first = view.segments[0].segment_id if view.segments else b""
    return first, view.start, view.end
