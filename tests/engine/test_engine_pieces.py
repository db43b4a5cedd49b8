"""Pieces (docs/single-flight.md): the engine's piece at an offset and the fetch loop's cut
(``proto.flight.piece_starts``) agree for V1 and V2, whole and range content information,
and no piece is larger than the cap by more than one V2 segment."""

from __future__ import annotations

import itertools
import random

import pytest

from peerdistd.engine.flight import piece_at, pieces_of
from peerdistd.engine.view import view_from_bytes
from peerdistd.proto.flight import piece_starts
from tests.content import content_information

MIB = 1 << 20
DATA = random.Random(5).randbytes(3 * MIB + 54321)


@pytest.mark.parametrize("version", [1, 2])
def test_engine_and_fetch_loop_cut_alike(version: int) -> None:
    info = content_information(DATA, version)
    view = view_from_bytes(info.to_bytes())
    starts = piece_starts(version, info.segments, MIB)
    assert starts[0] == 0 and starts == sorted(set(starts))
    bounds = [*starts, len(DATA)]
    for lo, hi in itertools.pairwise(bounds):
        for offset in (lo, (lo + hi) // 2, hi - 1):
            piece = piece_at(view, offset, MIB)
            assert piece is not None and (piece.start, piece.end) == (lo, hi)
        assert hi - lo <= MIB + (128 * 1024 if version == 2 else 0)
        if version == 1:
            assert lo % MIB == 0  # 16 blocks of 64 KiB from the segment's start


@pytest.mark.parametrize("version", [1, 2])
def test_range_content_information_names_the_same_pieces(version: int) -> None:
    info = content_information(DATA, version)
    whole = view_from_bytes(info.to_bytes())
    second = piece_starts(version, info.segments, MIB)[1]
    # A range that starts at the second piece and ends inside the last one.
    ranged = view_from_bytes(info.sub_range(second, len(DATA) - second - 1000).to_bytes())
    for offset in (second, second + 70_000, 2 * MIB + 10, len(DATA) - 2000):
        a, b = piece_at(whole, offset, MIB), piece_at(ranged, offset, MIB)
        assert a is not None and b is not None
        assert (a.id, a.start, a.end) == (b.id, b.start, b.end)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("cap", [MIB, 300_000])
def test_every_piece_of_a_content_in_one_pass_is_what_piece_at_names(
    version: int, cap: int
) -> None:
    """pieces_of (a DONE from another node, looked up by piece id) cuts like piece_at, and
    piece_at finds V2 pieces by bisection like the walk over every segment it replaced."""
    view = view_from_bytes(content_information(DATA, version).to_bytes())
    starts = pieces_of(view, cap)
    expected = {}
    for ref in view.blocks_from(view.start, view.end):
        piece = piece_at(view, ref.start, cap)
        assert piece is not None
        expected[piece.id] = piece
    assert starts == {piece.id: piece.start for piece in expected.values()}
    for piece_id, start in starts.items():
        assert piece_at(view, start, cap) == expected[piece_id]
    assert sum(p.end - p.start for p in expected.values()) == len(DATA)
