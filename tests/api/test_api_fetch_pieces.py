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
