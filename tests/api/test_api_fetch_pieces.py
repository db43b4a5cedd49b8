"""The fetch loop's units: the daemons' pieces, taken from a first one on, wrapping around;
a gap past a unit takes the untaken units after it."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from peerdistd.api.fetch_pieces import Pieces

KIB = 1024


def taken(pieces: Pieces) -> list[tuple[int, int]]:
    out = []
    while (unit := pieces.take()) is not None:
        out.append(unit)
    return out


def test_units_follow_the_cuts_and_else_every_unit() -> None:
    pieces = Pieces(0, 10 * KIB, [3 * KIB, 5 * KIB], 4 * KIB)
    assert taken(pieces) == [
        (0, 3 * KIB),
        (3 * KIB, 5 * KIB),
        (5 * KIB, 8 * KIB),
        (8 * KIB, 10 * KIB),
    ]


def test_taken_from_the_first_named_on_wrapping_around() -> None:
    pieces = Pieces(0, 4 * KIB, [], KIB)
    pieces.start_at(2)
    assert [s // KIB for s, _ in taken(pieces)] == [2, 3, 0, 1]


def test_a_gap_takes_the_untaken_units_after_it_up_to_its_end() -> None:
    pieces = Pieces(0, 6 * KIB, [], KIB)
    assert pieces.take() == (0, KIB)
    assert pieces.extend(KIB, 3 * KIB + 1) == 4 * KIB  # units 1-3: the gap ends in unit 3
    assert pieces.take() == (4 * KIB, 5 * KIB)


def test_a_gap_stops_at_a_unit_another_worker_took() -> None:
    pieces = Pieces(0, 6 * KIB, [], KIB)
    pieces.start_at(0)
    first = pieces.take()
    second = pieces.take()
    assert (first, second) == ((0, KIB), (KIB, 2 * KIB))
    assert pieces.extend(KIB, 5 * KIB) == KIB  # unit 1 is the other worker's
    assert pieces.extend(2 * KIB, 2 * KIB) == 2 * KIB  # nothing past the unit: no change


def test_an_empty_range_has_no_units() -> None:
    pieces = Pieces(5, 5, [], KIB)
    pieces.start_at(0)
    assert len(pieces) == 0 and pieces.take() is None


@given(
    st.integers(0, 5000),
    st.integers(1, 20000),
    st.lists(st.integers(0, 30000), max_size=12),
    st.integers(1, 4096),
    st.integers(0, 100),
)
def test_every_byte_is_in_exactly_one_unit_whatever_the_first(
    start: int, length: int, cuts: list[int], unit: int, first: int
) -> None:
    pieces = Pieces(start, start + length, cuts, unit)
    pieces.start_at(first)
    units = sorted(taken(pieces))
    assert units[0][0] == start and units[-1][1] == start + length
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(units))
    assert len(units) == len(pieces)


def test_a_reader_that_may_not_claim_never_takes_a_range_given_back_free() -> None:
    pieces = Pieces(0, 4 * KIB, [], KIB)
    first, second = pieces.take(claim=False), pieces.take(claim=False)
    assert (first, second) == ((0, KIB), (KIB, 2 * KIB))
    pieces.give_back(0, KIB, free=True)  # nobody fetches it: for a worker that may claim
    pieces.give_back(KIB + 10, 2 * KIB, free=False)  # another node is at it: later
    assert pieces.given_back() == 2
    # The reader: fresh units first, then the busy range; never the free one.
    assert [pieces.take(claim=False) for _ in range(4)] == [
        (2 * KIB, 3 * KIB),
        (3 * KIB, 4 * KIB),
        (KIB + 10, 2 * KIB),
        None,
    ]
    # A worker takes the free range, first.
    assert pieces.take() == (0, KIB)
    assert pieces.given_back() == 0 and pieces.take() is None


def test_a_worker_takes_free_ranges_before_fresh_units_and_busy_ones_last() -> None:
    pieces = Pieces(0, 4 * KIB, [], KIB)
    a, b = pieces.take(claim=False), pieces.take(claim=False)
    assert b is not None and a is not None
    pieces.give_back(*b, free=False)
    pieces.give_back(*a, free=True)
    assert taken(pieces) == [a, (2 * KIB, 3 * KIB), (3 * KIB, 4 * KIB), b]


def test_a_gap_takes_whole_units_given_back_free_and_stops_at_a_part_of_one() -> None:
    pieces = Pieces(0, 5 * KIB, [], KIB)
    units = [pieces.take(claim=False) for _ in range(4)]
    assert units[3] == (3 * KIB, 4 * KIB)
    pieces.give_back(KIB, 2 * KIB, free=True)
    pieces.give_back(2 * KIB, 3 * KIB, free=True)
    pieces.give_back(3 * KIB + 7, 4 * KIB, free=True)  # a part: its start was read
    # The worker holding unit 0 hears of a gap to the end: units 1 and 2 join its range,
    # the part of unit 3 does not (it does not start where the range ends).
    assert pieces.extend(KIB, 5 * KIB) == 3 * KIB
    assert pieces.take() == (3 * KIB + 7, 4 * KIB)
    assert pieces.take() == (4 * KIB, 5 * KIB)


@given(
    st.integers(1, 20000),
    st.integers(1, 4096),
    st.lists(st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 4096)), max_size=60),
)
def test_every_byte_is_read_once_whatever_is_given_back(
    length: int, unit: int, steps: list[tuple[bool, int, int]]
) -> None:
    """Readers and workers take ranges, read a prefix of each and give the rest back (free
    or busy) or finish it; in the end every byte was read exactly once."""
    pieces = Pieces(0, length, [], unit)
    read: list[tuple[int, int]] = []
    for claim, what, prefix in steps:
        got = pieces.take(claim=claim)
        if got is None:
            continue
        start, end = got
        cut = min(end, start + prefix)
        if what == 0 or cut == end:  # read to its end
            read.append((start, end))
            continue
        if cut > start:
            read.append((start, cut))
        pieces.give_back(cut, end, free=what == 1 and not claim)
    while (got := pieces.take()) is not None:  # a worker finishes what is left
        read.append(got)
    read.sort()
    assert read[0][0] == 0 and read[-1][1] == length
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in itertools.pairwise(read))
    assert pieces.given_back() == 0
