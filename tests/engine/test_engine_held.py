"""Held unverified bytes (engine/held.py) against a byte-by-byte model, and their caps."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdistd import errors
from peerdistd.engine.held import HeldBudget, HeldData

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 300), st.binary(min_size=0, max_size=80)),
        st.tuples(st.just("discard"), st.integers(0, 300), st.integers(0, 120)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_held_bytes_match_a_byte_model(ops: list[tuple[str, int, object]]) -> None:
    budget = HeldBudget(1 << 20)
    held = HeldData(1 << 20, budget)
    model: dict[int, int] = {}
    for op, offset, arg in ops:
        if op == "add":
            assert isinstance(arg, bytes)
            held.add(offset, arg)
            model.update((offset + i, b) for i, b in enumerate(arg))
        else:
            assert isinstance(arg, int)
            held.discard(offset, offset + arg)
            for i in range(offset, offset + arg):
                model.pop(i, None)
        spans = held.spans()
        assert all(a < b for a, b in spans)
        assert all(b < c for (_, b), (c, _) in itertools.pairwise(spans))
        got: dict[int, int] = {}
        for a, b in spans:
            piece = held.take(a, b)
            assert piece is not None
            got.update((a + i, x) for i, x in enumerate(piece))
        assert got == model
        assert held.size == budget.used == len(model)
    held.clear()
    assert budget.used == 0 and not held


def test_the_handle_cap_and_the_daemon_cap_are_separate_errors() -> None:
    budget = HeldBudget(100)
    one, two = HeldData(60, budget), HeldData(60, budget)
    one.add(0, b"x" * 60)
    with pytest.raises(errors.InvalidParameter):
        one.add(60, b"x")
    with pytest.raises(errors.ServiceUnavailable):
        two.add(0, b"x" * 41)
    two.add(0, b"x" * 40)
    one.discard(0, 30)
    two.add(40, b"x" * 20)
    assert budget.used == 90
