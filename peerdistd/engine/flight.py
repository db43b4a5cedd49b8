"""Single flight across the branch: before a read reports MISSING_DATA for data no peer
holds, the peerdistd nodes that want it agree who fetches each piece from the origin
(docs/single-flight.md). The claims protocol lives in ``proto.flight_board`` and
``net.flight``; this module cuts content into pieces and decides what a read does.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from peerdistd.engine.view import ContentView
from peerdistd.proto.flight import PieceId
from peerdistd.proto.flight_board import Lookup, Verdict
from peerdistd.proto.pccrc import BlockRef

MAX_MINE = 4096  # our claims remembered for progress reports (the board's bound)
CONTENTION_WINDOW = 0.012  # seconds between CLAIM and HOLD: a LAN round trip many times over
TAKEOVER_SPREAD = 8  # a claim taken over waits a random 0..this many windows first


class ClaimNetwork(Protocol):
    """The claims protocol (``peerdistd.net.flight.FlightNet``)."""

    @property
    def ttl(self) -> float: ...
    def lookup(self, piece: PieceId) -> Lookup: ...
    async def claim(self, piece: PieceId, window: float) -> bool: ...
    def progress(self, piece: PieceId, held: int, total: int) -> None: ...
    def release(self, pieces: list[PieceId]) -> None: ...
    async def wait(self, piece: PieceId, timeout: float) -> None: ...
    def forget(self, piece: PieceId) -> None: ...
    def on_done(self, listener: Callable[[PieceId, str], None]) -> None:
        """Call ``listener(piece, endpoint)`` for every DONE another node sends."""


class HeldBlocks(Protocol):
    def has_block(self, segment_id: bytes, index: int, expected: bytes | None = None) -> bool: ...


@dataclass(frozen=True, slots=True)
class Piece:
    """At most ``cap`` bytes on block boundaries, the same cut on every node."""

    id: PieceId
    start: int
    end: int
    blocks: tuple[tuple[bytes, int, int], ...]  # (segment id, block index, start offset)


def piece_at(view: ContentView, offset: int, cap: int) -> Piece | None:
    """The piece holding ``offset``. V1: ``cap // block size`` blocks of one segment, counted
    from the segment's first block. V2 (one block per segment): the consecutive segments whose
    start lies in the same ``cap``-sized stretch of the content as the segment at ``offset``."""
    ref = view.block_at(offset)
    if ref is None:
        return None
    seg = ref.segment
    if view.version == 1:
        per = max(1, cap // seg.block_size)
        first = ref.index // per * per
        last = min(first + per, seg.block_count) - 1
        start, end = seg.block_span(first)[0], seg.block_span(last)[1]
        blocks = tuple((seg.segment_id, i, seg.block_span(i)[0]) for i in range(first, last + 1))
        return Piece(PieceId(seg.segment_id, first), start, end, blocks)
    bucket = seg.offset // cap
    members = view.segments_starting(bucket * cap, (bucket + 1) * cap)
    return Piece(
        PieceId(members[0].segment_id, 0),
        members[0].offset,
        members[-1].offset + members[-1].length,
        tuple((s.segment_id, 0, s.offset) for s in members),
    )


def pieces_of(view: ContentView, cap: int) -> dict[PieceId, int]:
    """Where each piece of ``view`` starts, by id (:func:`piece_at` of that offset gives the
    piece), in one pass over the segments: a handle read whole keeps this, not the pieces."""
    starts: dict[PieceId, int] = {}
    if view.version == 1:
        for seg in view.segments:
            per = max(1, cap // seg.block_size)
            for first in range(0, seg.block_count, per):
                starts[PieceId(seg.segment_id, first)] = seg.block_span(first)[0]
        return starts
    for _bucket, group in itertools.groupby(view.segments, key=lambda s: s.offset // cap):
        first_seg = next(group)
        starts[PieceId(first_seg.segment_id, 0)] = first_seg.offset
    return starts


class Outcome(Enum):
    MINE = "mine"  # report MISSING_DATA for the piece: this node fetches it from the origin
    HELD = "held"  # another node has it whole: fetch from its endpoint
    LOCAL = "local"  # it arrived here meanwhile: read it from the cache
    TIMEOUT = "timeout"  # the read's deadline came first
    FREE = "free"  # nobody fetches it and the read may not claim it (the no_claim flag)


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    piece: Piece
    endpoint: str = ""


@dataclass(slots=True)
class _Mine:
    piece: Piece
    view: ContentView
    handle: str


@dataclass(slots=True)
class _Whole:
    """A content read whole: its view, where its pieces start, how many handles read it."""

    view: ContentView
    starts: dict[PieceId, int]
    handles: int = 0


class SingleFlight:
    """The engine's side of the claims: one per daemon."""

    def __init__(
        self,
        store: HeldBlocks,
        claims: ClaimNetwork,
        *,
        piece_cap: int = 1 << 20,
        window: float = CONTENTION_WINDOW,
        spread: Callable[[float], float] = lambda most: random.uniform(0.0, most),  # noqa: S311 (jitter, not a secret)
    ) -> None:
        self.store = store
        self.claims = claims
        self.piece_cap = piece_cap
        self.window = window
        self._spread = spread  # seconds to wait, at most the argument (tests script it)
        self._mine: OrderedDict[PieceId, _Mine] = OrderedDict()
        # Contents read whole (the ``whole`` open flag): where their pieces start, by id, so
        # that a DONE from another node can be fetched before the application asks. One map
        # per content however many handles read it (a thousand handles on one large content
        # would otherwise hold a thousand), kept while one of them is open.
        self._whole: dict[str, int] = {}  # handle -> its content's key in _contents
        self._contents: dict[int, _Whole] = {}

    async def decide(
        self,
        view: ContentView,
        first: BlockRef,
        deadline: float,
        handle: str,
        *,
        claim: bool = True,
    ) -> Decision | None:
        """What a read at ``first`` does when no peer is known to hold it (None: no piece).
        ``claim`` False: a free piece is reported FREE instead of being claimed."""
        piece = piece_at(view, first.start, self.piece_cap)
        if piece is None:
            return None
        key = (first.segment.segment_id, first.index)
        waited = spread = False
        while True:
            if self.store.has_block(*key, expected=first.hash):
                return Decision(Outcome.LOCAL, piece)
            look = self.claims.lookup(piece.id)
            remaining = deadline - time.monotonic()
            if look.verdict is Verdict.FREE and not claim:
                return Decision(Outcome.FREE, piece)
            if look.verdict is Verdict.FREE and waited and not spread:
                # A claim we waited for ended (released, or its node died): every node that
                # waited for it sees that at the same moment, and claims made together are
                # the ones a loaded host settles twice. A random wait spreads them, so most
                # see the first new CLAIM before they would send their own.
                spread = True
                pause = self._spread(TAKEOVER_SPREAD * self.window)
                await asyncio.sleep(max(0.0, min(pause, remaining)))
                continue
            if look.verdict is Verdict.FREE:
                # Remembered before the window, so that another read of this node waits.
                self._remember(piece, view, handle)
                if await self.claims.claim(piece.id, self.window):
                    return Decision(Outcome.MINE, piece)
                self._mine.pop(piece.id, None)
                continue  # lost the tie: wait for the winner
            if look.verdict is Verdict.HELD:
                return Decision(Outcome.HELD, piece, look.endpoint)
            if look.verdict is Verdict.MINE:
                mine = self._mine.get(piece.id)
                if mine is None or mine.handle == handle:
                    # The application that was told to fetch it asks again: tell it again.
                    self._remember(piece, view, handle)
                    return Decision(Outcome.MINE, piece)
                until = deadline
            else:
                until = min(deadline, look.until)
            if remaining <= 0:
                return Decision(Outcome.TIMEOUT, piece)
            await self.claims.wait(piece.id, until - time.monotonic())
            waited = True
            if time.monotonic() >= deadline and not self.store.has_block(*key, expected=first.hash):
                return Decision(Outcome.TIMEOUT, piece)

    def added(self, view: ContentView, start: int, end: int) -> None:
        """Data was added over ``[start, end)``: report progress of our claims there."""
        if not self._mine:
            return
        pos = start
        while pos < end:
            piece = piece_at(view, pos, self.piece_cap)
            if piece is None:
                break
            mine = self._mine.get(piece.id)
            if mine is not None:
                self._report(mine)
            pos = max(piece.end, pos + 1)

    def forget(self, piece: Piece) -> None:
        """The node said to hold ``piece`` did not have it: it is free again."""
        self.claims.forget(piece.id)

    @property
    def contents_read_whole(self) -> int:
        return len(self._contents)

    def watch(self, handle: str, view: ContentView) -> None:
        """``handle`` will read all of ``view``: :meth:`wanted` names its pieces."""
        self._unwatch(handle)
        if not view.complete:
            return
        key = id(view)  # the entry holds the view: its id is not reused meanwhile
        entry = self._contents.get(key)
        if entry is None:
            entry = self._contents[key] = _Whole(view, pieces_of(view, self.piece_cap))
        entry.handles += 1
        self._whole[handle] = key

    def wanted(self, piece: PieceId) -> list[tuple[ContentView, Piece]]:
        """The contents read whole that have ``piece`` (one entry per content)."""
        found: list[tuple[ContentView, Piece]] = []
        for entry in self._contents.values():
            start = entry.starts.get(piece)
            if start is not None:
                whole = piece_at(entry.view, start, self.piece_cap)
                if whole is not None and whole.id == piece:
                    found.append((entry.view, whole))
        return found

    def _unwatch(self, handle: str) -> None:
        key = self._whole.pop(handle, None)
        entry = None if key is None else self._contents.get(key)
        if key is not None and entry is not None:
            entry.handles -= 1
            if entry.handles <= 0:
                del self._contents[key]

    def closed(self, handle: str) -> None:
        """The handle's claims end with it (the application will not fetch them now)."""
        self._unwatch(handle)
        gone = [p for p, m in self._mine.items() if m.handle == handle]
        for piece in gone:
            del self._mine[piece]
        if gone:
            self.claims.release(gone)

    def _report(self, mine: _Mine) -> None:
        # Only the blocks this view can describe count (a range content information may
        # cover part of a piece): the claim is done when they are all here.
        view = mine.view
        wanted = [
            ref
            for b in mine.piece.blocks
            if view.start <= b[2] < view.end and (ref := view.block_at(b[2])) is not None
        ]
        held = sum(
            1
            for ref in wanted
            if self.store.has_block(ref.segment.segment_id, ref.index, expected=ref.hash)
        )
        self.claims.progress(mine.piece.id, held, len(wanted))
        if held >= len(wanted):
            self._mine.pop(mine.piece.id, None)

    def _remember(self, piece: Piece, view: ContentView, handle: str) -> None:
        self._mine[piece.id] = _Mine(piece, view, handle)
        self._mine.move_to_end(piece.id)
        while len(self._mine) > MAX_MINE:
            self._mine.popitem(last=False)
