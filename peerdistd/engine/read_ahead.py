"""Looking ahead of a reader that needs peers: which segments to ask about (and ask ahead
of the read's window, off its path), and which blocks to fetch ahead of it in runs while
transfer slots are free (DESIGN.md, "Reads are streams"; docs/benchmarks.md, V2)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from peerdistd.engine.fetching import Fetcher
from peerdistd.engine.ports import PeerNetwork
from peerdistd.engine.slots import SlotPool
from peerdistd.engine.stats import Counters
from peerdistd.engine.view import ContentView
from peerdistd.proto.pccrc import BlockRef
from peerdistd.proto.pccrr import RUN_BYTES, RUN_LIMIT

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


class ReadAhead:
    """Discovery for reads and the fetches ahead of them; the fetches go to ``fetcher``."""

    def __init__(
        self,
        peers: PeerNetwork,
        slots: SlotPool,
        stats: Counters,
        fetcher: Fetcher,
        spawn: Callable[[asyncio.Future[Any]], None],
    ) -> None:
        self.peers = peers
        self.slots = slots
        self.stats = stats
        self.fetcher = fetcher
        self._spawn = spawn
        # Read-ahead behind local hits locates in the background, one window per content at a
        # time (keyed by the window's first segment).
        self._ahead: dict[bytes, asyncio.Task[bool]] = {}
        # Per content: where the background read-ahead stopped (locate_ahead).
        self._ahead_marks: OrderedDict[tuple[bytes, int, int], int] = OrderedDict()
        self._hinted: OrderedDict[bytes, float] = OrderedDict()  # segment id -> ask again at

    def forget_mark(self, view: ContentView) -> None:
        """Forget where the read-ahead of ``view`` stopped: the next one checks every block
        again."""
        self._ahead_marks.pop(_mark_key(view), None)

    async def locate(
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

    def locate_ahead(self, view: ContentView, start: int, timeout: float) -> None:
        """Keep a sequential reader's pipe full without holding up its read: locate the next
        window (the peer network answers at once for segments it knows or can guess) and
        fetch ahead of ``start`` what peers hold."""
        first = view.block_at(start)
        if first is None or first.segment.segment_id in self._ahead:
            return
        key = first.segment.segment_id
        deadline = time.monotonic() + timeout

        async def ahead() -> bool:
            located = await self.locate(view, start, timeout, count=False)
            # From where the last read-ahead of this content stopped: every block before it
            # is held or on its way, and checking each again cost the loop a store call per
            # block per read (V2: a hundred segments per 8 MiB).
            mark = _mark_key(view)
            begin = max(start, self._ahead_marks.get(mark, start))
            if begin < start + READ_AHEAD_BYTES:
                reached = self.fetch_ahead(view, begin, start + READ_AHEAD_BYTES, located, deadline)
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
        ids = view.segment_ids(offset, view.end, limit=window + LOCATE_AHEAD * LOCATE_SEGMENTS)
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

    def run_from(
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

    def fetch_ahead(
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


def _mark_key(view: ContentView) -> tuple[bytes, int, int]:
    """A content range, for remembering its read-ahead position (hashing a view would hash
    every segment)."""
    first = view.segments[0].segment_id if view.segments else b""
    return first, view.start, view.end
