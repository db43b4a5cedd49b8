"""The single-flight claim board: who fetches which piece from the origin, sans-IO.

Every call takes ``now`` (seconds, monotonic) and returns the messages to send; the driver in
``peerdistd.net.flight`` only moves datagrams and arms timers. Rules (docs/single-flight.md):

* A node claims a free piece with CLAIM and waits a short contention window. A CLAIM from a
  lower node id, or any HOLD, seen in that window makes it withdraw; otherwise it settles:
  it sends HOLD and fetches the piece from the origin.
* A settled claimant sends HOLD every ``ttl / 4`` while its piece makes progress, and answers
  another node's CLAIM for it with HOLD at once. A piece that made no progress for ``ttl`` is
  released (RELEASE). Others forget a claim ``ttl`` after its last message: a dead or frozen
  claimant is taken over within ``ttl``.
* A claimant whose piece is whole sends DONE; others fetch it from its PCCRR endpoint.
* Two settled claims for one piece (its CLAIMs or answers came later than the window, lost or
  delayed: a loaded host answers late) both fetch it. Every node that sees that doubles its
  contention window (up to STRETCH_MAX times the base); each claim of its own that ends
  without a second claimant shrinks it back a little.

Every table is bounded: keys come from the network.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum

from peerdistd.proto.flight import MAX_PIECES, Kind, Message, PieceId, PieceState

MAX_REMOTE = 8192  # pieces claimed or held by others, remembered
MAX_OURS = 4096
DONE_TTL = 60.0  # seconds a DONE is trusted as "that node holds it"
STRETCH_MAX = 16.0  # the contention window grows to at most this many times its base
STRETCH_DECAY = 0.9  # per claim of ours that ended without a second claimant


class Verdict(Enum):
    FREE = "free"  # nobody claims it: claim it
    MINE = "mine"  # this node fetches it
    WAIT = "wait"  # another node fetches it: wait for DONE / RELEASE / expiry
    HELD = "held"  # another node holds it whole: fetch from its endpoint


@dataclass(frozen=True, slots=True)
class Lookup:
    verdict: Verdict
    endpoint: str = ""  # the other node's PCCRR address (WAIT, HELD)
    until: float = 0.0  # WAIT: when the claim expires unless renewed


@dataclass(slots=True)
class _Ours:
    settled: bool
    lost: bool = False
    held: int = 0
    last_progress: float = 0.0
    doubled: bool = False  # another node settled a claim of this piece too


@dataclass(slots=True)
class _Remote:
    node: bytes
    endpoint: str
    settled: bool
    expires: float
    doubled: bool = False  # a second node settled a claim of this piece too (counted once)


@dataclass(slots=True)
class Board:
    """This node's view of the branch's claims."""

    node: bytes
    endpoint: str
    ttl: float = 2.0
    _ours: OrderedDict[PieceId, _Ours] = field(default_factory=OrderedDict)
    _remote: OrderedDict[PieceId, _Remote] = field(default_factory=OrderedDict)
    _done: OrderedDict[PieceId, tuple[str, float]] = field(default_factory=OrderedDict)
    doubled: int = 0  # pieces seen claimed by two settled claimants (each fetched twice)
    stretch: float = 1.0  # the contention window is its base times this

    def window(self, base: float) -> float:
        """The contention window to wait after a CLAIM: ``base``, stretched while claims
        were recently seen settled twice (answers arriving later than the window)."""
        return base * self.stretch

    # -- looking and claiming ------------------------------------------------------------

    def lookup(self, piece: PieceId, now: float) -> Lookup:
        ours = self._ours.get(piece)
        if ours is not None and not ours.lost:
            return Lookup(Verdict.MINE)
        remote = self._remote.get(piece)
        if remote is not None:
            if remote.expires > now:
                return Lookup(Verdict.WAIT, remote.endpoint, remote.expires)
            del self._remote[piece]
        done = self._done.get(piece)
        if done is not None:
            if done[1] > now:
                return Lookup(Verdict.HELD, done[0])
            del self._done[piece]
        if ours is not None:  # lost, and the winner is gone: free again
            del self._ours[piece]
        return Lookup(Verdict.FREE)

    def claim(self, piece: PieceId, now: float) -> Message:
        """Start a tentative claim; the caller waits the contention window, then settles."""
        self._ours[piece] = _Ours(settled=False, last_progress=now)
        self._ours.move_to_end(piece)
        while len(self._ours) > MAX_OURS:
            self._ours.popitem(last=False)
        return self._message(Kind.CLAIM, [PieceState(piece)])

    def settle(self, piece: PieceId, now: float) -> Message | None:
        """After the window: HOLD to send if the claim won, None if it was lost."""
        ours = self._ours.get(piece)
        if ours is None or ours.lost:
            return None
        ours.settled = True
        ours.last_progress = now
        return self._message(Kind.HOLD, [PieceState(piece, ours.held)])

    def progress(self, piece: PieceId, held: int, total: int, now: float) -> Message | None:
        """Our claim has ``held`` of ``total`` blocks: DONE once whole (the claim ends)."""
        ours = self._ours.get(piece)
        if ours is None or ours.lost:
            return None
        if held > ours.held:
            ours.held = held
            ours.last_progress = now
        if held >= total:
            del self._ours[piece]
            if not ours.doubled:
                self.stretch = max(1.0, self.stretch * STRETCH_DECAY)
            return self._message(Kind.DONE, [PieceState(piece, held)])
        return None

    def release(self, pieces: list[PieceId]) -> list[Message]:
        """Give up our claims of ``pieces`` (handle closed, read failed)."""
        gone = [p for p in pieces if self._ours.pop(p, None) is not None]
        return self._batched(Kind.RELEASE, [PieceState(p) for p in gone])

    def forget(self, piece: PieceId) -> None:
        """What we heard of ``piece`` proved wrong (its holder no longer has it)."""
        self._done.pop(piece, None)

    def ours(self) -> list[PieceId]:
        return [p for p, o in self._ours.items() if not o.lost]

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> tuple[list[Message], list[PieceId]]:
        """Renewals of live settled claims, and RELEASE of those stalled for ``ttl``;
        also the pieces released (the engine stops waiting for them)."""
        live: list[PieceState] = []
        stalled: list[PieceId] = []
        for piece, ours in list(self._ours.items()):
            if ours.lost:
                continue
            if now - ours.last_progress > self.ttl:
                stalled.append(piece)
            elif ours.settled:
                live.append(PieceState(piece, ours.held))
        out = self._batched(Kind.HOLD, live)
        out += self.release(stalled)
        return out, stalled

    # -- what others say -----------------------------------------------------------------

    def observe(self, msg: Message, now: float) -> tuple[list[Message], set[PieceId]]:
        """Take another node's message; answers to send, and pieces whose state changed."""
        if msg.node == self.node:
            return [], set()
        ttl = min(msg.ttl_ms / 1000.0, 4 * self.ttl)  # a remote cannot pin a piece for long
        replies: list[PieceState] = []
        changed: set[PieceId] = set()
        for state in msg.pieces:
            piece = state.piece
            ours = self._ours.get(piece)
            if msg.kind is Kind.CLAIM or msg.kind is Kind.HOLD:
                if ours is not None and not ours.lost:
                    if ours.settled:
                        if msg.kind is Kind.CLAIM:
                            replies.append(PieceState(piece, ours.held))  # assert ours
                        elif not ours.doubled:  # two settled claims: both fetch
                            ours.doubled = True
                            self._seen_doubled()
                        continue
                    if msg.kind is Kind.CLAIM and self.node < msg.node:
                        continue  # we win the tie; our HOLD will tell them
                    ours.lost = True
                    changed.add(piece)
                self._remember(piece, msg, msg.kind is Kind.HOLD, now, ttl)
            elif msg.kind is Kind.DONE:
                remote = self._remote.get(piece)
                if remote is not None and remote.node == msg.node:
                    del self._remote[piece]
                self._done[piece] = (msg.endpoint, now + DONE_TTL)
                self._done.move_to_end(piece)
                while len(self._done) > MAX_REMOTE:
                    self._done.popitem(last=False)
                changed.add(piece)
            elif msg.kind is Kind.RELEASE:
                remote = self._remote.get(piece)
                if remote is not None and remote.node == msg.node:
                    del self._remote[piece]
                    changed.add(piece)
        return self._batched(Kind.HOLD, replies), changed

    def _remember(
        self, piece: PieceId, msg: Message, settled: bool, now: float, ttl: float
    ) -> None:
        current = self._remote.get(piece)
        live = current is not None and current.expires > now
        doubled = live and current is not None and current.doubled
        if current is not None and live and current.node != msg.node:
            if current.settled and settled and not current.doubled:
                current.doubled = doubled = True  # two others both fetch it
                self._seen_doubled()
            # Two others contend: a settled claim beats a tentative one, else the lower id.
            if current.settled and not settled:
                return
            if current.settled == settled and current.node < msg.node:
                return
        self._remote[piece] = _Remote(msg.node, msg.endpoint, settled, now + ttl, doubled)
        self._remote.move_to_end(piece)
        while len(self._remote) > MAX_REMOTE:
            self._remote.popitem(last=False)

    def _seen_doubled(self) -> None:
        self.doubled += 1
        self.stretch = min(STRETCH_MAX, self.stretch * 2)

    def _message(self, kind: Kind, pieces: list[PieceState]) -> Message:
        return Message(kind, self.node, self.endpoint, int(self.ttl * 1000), tuple(pieces))

    def _batched(self, kind: Kind, pieces: list[PieceState]) -> list[Message]:
        return [
            self._message(kind, pieces[i : i + MAX_PIECES])
            for i in range(0, len(pieces), MAX_PIECES)
        ]
