"""A claim taken over: the readers that waited for it do not all claim at the same moment.

Every node waiting for a piece sees its claim end (released, or its node died) at once, and
claims sent together are what a loaded host settles twice (the piece then crosses the WAN
twice: seen in `test_claimant_killed_mid_piece_is_taken_over` at load 10). A waiting reader
pauses a random moment (at most TAKEOVER_SPREAD contention windows) and looks at the board
again before it claims: a CLAIM from another node that arrived meanwhile makes it wait.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from peerdistd.engine.flight import TAKEOVER_SPREAD, Outcome, SingleFlight, piece_at
from peerdistd.engine.view import ContentView, view_from_bytes
from peerdistd.proto.flight import PieceId
from peerdistd.proto.flight_board import Lookup, Verdict
from tests.content import BLOCK, content, content_information


class Board:
    """A scripted claim board: the verdicts the node sees, in order."""

    def __init__(self, verdicts: list[Lookup]) -> None:
        self.verdicts = verdicts
        self.claimed: list[PieceId] = []

    @property
    def ttl(self) -> float:
        return 2.0

    def lookup(self, piece: PieceId) -> Lookup:
        return self.verdicts[0] if len(self.verdicts) == 1 else self.verdicts.pop(0)

    async def claim(self, piece: PieceId, window: float) -> bool:
        self.claimed.append(piece)
        return True

    def progress(self, piece: PieceId, held: int, total: int) -> None: ...
    def release(self, pieces: list[PieceId]) -> None: ...
    def forget(self, piece: PieceId) -> None: ...
    def on_done(self, listener: Callable[[PieceId, str], None]) -> None: ...

    async def wait(self, piece: PieceId, timeout: float) -> None:
        return None  # the claim we waited for ended at once


class NothingHeld:
    def has_block(self, segment_id: bytes, index: int, expected: bytes | None = None) -> bool:
        return False


def setup(verdicts: list[Lookup], spread: list[float]) -> tuple[SingleFlight, Board, ContentView]:
    view = view_from_bytes(content_information(content(4 * BLOCK, seed=5)).to_bytes())
    board = Board(verdicts)

    def pause(most: float) -> float:
        spread.append(most)
        # While this node pauses, another node's CLAIM for the piece arrives.
        board.verdicts[:] = [
            Lookup(Verdict.WAIT, "10.0.0.9:80", time.monotonic() + 2),
            Lookup(Verdict.HELD, "10.0.0.9:80"),
        ]
        return 0.0

    flight = SingleFlight(NothingHeld(), board, spread=pause)
    return flight, board, view


async def test_a_reader_whose_claim_ended_looks_again_before_claiming() -> None:
    waited = Lookup(Verdict.WAIT, "10.0.0.8:80", time.monotonic() + 2)
    spread: list[float] = []
    flight, board, view = setup([waited, Lookup(Verdict.FREE)], spread)
    first = view.block_at(0)
    assert first is not None
    decision = await flight.decide(view, first, time.monotonic() + 5, "h")
    assert decision is not None and decision.outcome is Outcome.HELD  # the other node's
    assert board.claimed == []  # it never claimed alongside
    assert spread == [TAKEOVER_SPREAD * flight.window]


async def test_a_free_piece_nobody_claimed_before_is_claimed_at_once() -> None:
    spread: list[float] = []
    flight, board, view = setup([Lookup(Verdict.FREE)], spread)
    first = view.block_at(0)
    assert first is not None
    decision = await flight.decide(view, first, time.monotonic() + 5, "h")
    assert decision is not None and decision.outcome is Outcome.MINE
    assert spread == [] and len(board.claimed) == 1


async def test_a_read_that_may_not_claim_hears_the_piece_is_free_and_claims_nothing() -> None:
    """The no_claim read flag (fetch_loop's peer readers): a free piece is reported FREE, at
    once, also when the claim it waited for ended (no pause: it sends no CLAIM to spread)."""
    for verdicts in (
        [Lookup(Verdict.FREE)],
        [Lookup(Verdict.WAIT, "10.0.0.8:80", time.monotonic() + 2), Lookup(Verdict.FREE)],
    ):
        spread: list[float] = []
        flight, board, view = setup(verdicts, spread)
        first = view.block_at(0)
        assert first is not None
        decision = await flight.decide(view, first, time.monotonic() + 5, "h", claim=False)
        assert decision is not None and decision.outcome is Outcome.FREE
        assert board.claimed == [] and spread == []


def test_handles_reading_one_content_whole_share_one_piece_map() -> None:
    """The ``whole`` open flag: a DONE names each content once, and a thousand handles on one
    content keep one map of where its pieces start, dropped with the last of them."""
    flight, _board, view = setup([Lookup(Verdict.FREE)], [])
    first = piece_at(view, view.start, flight.piece_cap)
    assert first is not None
    flight.watch("h1", view)
    flight.watch("h2", view)
    flight.watch("h2", view)  # again (its content information completed): still once
    assert flight.contents_read_whole == 1
    assert [(v, p) for v, p in flight.wanted(first.id)] == [(view, first)]
    flight.closed("h1")
    assert flight.contents_read_whole == 1 and len(flight.wanted(first.id)) == 1
    flight.closed("h2")
    assert flight.contents_read_whole == 0 and flight.wanted(first.id) == []
