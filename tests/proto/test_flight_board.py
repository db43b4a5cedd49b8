"""The claim board's rules (docs/single-flight.md), driven with an explicit clock: ties go
to the lower node id, a settled claim beats a tentative one, claims expire after their ttl,
stalled claims are released, DONE names the holder, and tables stay bounded."""

from __future__ import annotations

from peerdistd.proto import flight_board
from peerdistd.proto.flight import Kind, Message, PieceId, PieceState
from peerdistd.proto.flight_board import Board, Verdict

P = PieceId(b"\x01" * 32, 0)
LOW, MID, HIGH = b"\x00" * 16, b"\x55" * 16, b"\xff" * 16


def msg(kind: Kind, node: bytes, piece: PieceId = P, ttl_ms: int = 2000) -> Message:
    return Message(kind, node, f"10.0.0.{node[0] % 200 + 1}:80", ttl_ms, (PieceState(piece),))


def test_free_piece_is_claimed_and_settled() -> None:
    b = Board(MID, "10.0.0.2:80")
    assert b.lookup(P, 0.0).verdict is Verdict.FREE
    assert b.claim(P, 0.0).kind is Kind.CLAIM
    hold = b.settle(P, 0.02)
    assert hold is not None and hold.kind is Kind.HOLD
    assert b.lookup(P, 0.02).verdict is Verdict.MINE


def test_lower_id_wins_a_tie_in_the_window() -> None:
    high, low = Board(HIGH, "10.0.0.3:80"), Board(LOW, "10.0.0.1:80")
    c_high, c_low = high.claim(P, 0.0), low.claim(P, 0.0)
    high.observe(c_low, 0.001)
    replies, _ = low.observe(c_high, 0.001)
    assert replies == []  # the winner does not answer a tentative claim: its HOLD will
    assert high.settle(P, 0.02) is None
    assert low.settle(P, 0.02) is not None
    look = high.lookup(P, 0.02)
    assert (look.verdict, look.endpoint) == (Verdict.WAIT, "10.0.0.1:80")


def test_settled_claim_answers_a_late_claim_and_wins() -> None:
    owner, late = Board(HIGH, "10.0.0.3:80"), Board(LOW, "10.0.0.1:80")
    owner.claim(P, 0.0)
    owner.settle(P, 0.02)
    claim = late.claim(P, 1.0)
    replies, _ = owner.observe(claim, 1.0)
    assert [r.kind for r in replies] == [Kind.HOLD]  # asserted at once, whatever the ids
    late.observe(replies[0], 1.001)
    assert late.settle(P, 1.02) is None
    assert late.lookup(P, 1.02).verdict is Verdict.WAIT


def test_remote_claim_expires_after_its_ttl() -> None:
    b = Board(HIGH, "10.0.0.3:80")
    b.observe(msg(Kind.HOLD, LOW, ttl_ms=1000), 0.0)
    look = b.lookup(P, 0.5)
    assert (look.verdict, look.until) == (Verdict.WAIT, 1.0)
    assert b.lookup(P, 1.0).verdict is Verdict.FREE


def test_a_remote_cannot_pin_a_piece_for_long() -> None:
    b = Board(HIGH, "10.0.0.3:80", ttl=2.0)
    b.observe(msg(Kind.HOLD, LOW, ttl_ms=65535), 0.0)
    assert b.lookup(P, 8.0).verdict is Verdict.FREE  # capped at 4 x our ttl


def test_done_names_the_holder_and_release_frees() -> None:
    b = Board(HIGH, "10.0.0.3:80")
    b.observe(msg(Kind.HOLD, LOW), 0.0)
    _, changed = b.observe(msg(Kind.DONE, LOW), 0.1)
    assert changed == {P}
    look = b.lookup(P, 0.2)
    assert (look.verdict, look.endpoint) == (Verdict.HELD, "10.0.0.1:80")
    b.forget(P)
    assert b.lookup(P, 0.2).verdict is Verdict.FREE
    b.observe(msg(Kind.HOLD, MID), 0.3)
    _, changed = b.observe(msg(Kind.RELEASE, LOW), 0.4)  # not the claimant: ignored
    assert changed == set() and b.lookup(P, 0.4).verdict is Verdict.WAIT
    _, changed = b.observe(msg(Kind.RELEASE, MID), 0.5)
    assert changed == {P} and b.lookup(P, 0.5).verdict is Verdict.FREE


def test_progress_renews_done_ends_stall_releases() -> None:
    b = Board(MID, "10.0.0.2:80", ttl=2.0)
    b.claim(P, 0.0)
    b.settle(P, 0.0)
    assert b.progress(P, 3, 16, 1.5) is None
    out, stalled = b.tick(3.0)  # progress 1.5 s ago: renewed
    assert [m.kind for m in out] == [Kind.HOLD] and out[0].pieces[0].held == 3
    assert stalled == []
    out, stalled = b.tick(3.6)  # nothing for 2.1 s: released
    assert [m.kind for m in out] == [Kind.RELEASE] and stalled == [P]
    assert b.lookup(P, 3.6).verdict is Verdict.FREE
    b.claim(P, 4.0)
    b.settle(P, 4.0)
    done = b.progress(P, 16, 16, 4.5)
    assert done is not None and done.kind is Kind.DONE
    assert b.lookup(P, 4.5).verdict is Verdict.FREE


def test_own_messages_are_ignored() -> None:
    b = Board(MID, "10.0.0.2:80")
    assert b.observe(msg(Kind.HOLD, MID), 0.0) == ([], set())
    assert b.lookup(P, 0.0).verdict is Verdict.FREE


def test_renewals_are_batched() -> None:
    b = Board(MID, "10.0.0.2:80")
    for i in range(40):
        piece = PieceId(b"\x02" * 32, 16 * i)
        b.claim(piece, 0.0)
        b.settle(piece, 0.0)
    out, _ = b.tick(0.5)
    assert [len(m.pieces) for m in out] == [16, 16, 8]
    assert all(len(bytes(m)) <= 1400 for m in out)


def test_tables_are_bounded() -> None:
    b = Board(HIGH, "10.0.0.3:80")
    limit = flight_board.MAX_REMOTE
    for i in range(limit + 50):
        b.observe(msg(Kind.HOLD, LOW, PieceId(i.to_bytes(32, "big"), 0)), 0.0)
        b.observe(msg(Kind.DONE, LOW, PieceId((i + 1 << 200).to_bytes(32, "big"), 0)), 0.0)
    assert len(b._remote) == limit and len(b._done) == limit


def test_claims_settled_twice_stretch_the_window_and_clean_claims_shrink_it() -> None:
    # Two nodes whose answers came later than the window (a loaded host) both settle: each
    # doubles its window once per such piece, however often the other renews it.
    a, b = Board(LOW, "10.0.0.1:80"), Board(HIGH, "10.0.0.3:80")
    a.claim(P, 0.0)
    b.claim(P, 0.0)
    hold_a, hold_b = a.settle(P, 0.012), b.settle(P, 0.012)
    assert hold_a is not None and hold_b is not None
    for t in (0.02, 0.5, 1.0):  # the late HOLDs and their renewals
        a.observe(hold_b, t)
        b.observe(hold_a, t)
    assert (a.doubled, b.doubled) == (1, 1)
    assert a.window(0.012) == b.window(0.012) == 0.024
    # A claim of a's own that ends with no second claimant shrinks it back a little.
    q = PieceId(b"\x02" * 32, 0)
    a.claim(q, 2.0)
    a.settle(q, 2.03)
    assert a.progress(q, 4, 4, 2.5) is not None
    assert a.window(0.012) == 0.012 * 2 * flight_board.STRETCH_DECAY


def test_a_node_seeing_two_others_settle_one_piece_stretches_its_window() -> None:
    c = Board(MID, "10.0.0.2:80")
    for t in (0.0, 0.5, 1.0):  # renewals count once
        c.observe(msg(Kind.HOLD, LOW), t)
        c.observe(msg(Kind.HOLD, HIGH), t + 0.001)
    assert c.doubled == 1 and c.window(0.01) == 0.02
    for n in range(10):  # bounded, whatever the network says
        c.observe(msg(Kind.HOLD, bytes([n]) * 16, PieceId(bytes([n + 9]) * 32, 0)), 2.0)
        c.observe(msg(Kind.HOLD, bytes([n + 100]) * 16, PieceId(bytes([n + 9]) * 32, 0)), 2.0)
    assert c.window(0.01) == 0.01 * flight_board.STRETCH_MAX
