"""V2 content-defined chunking: pinned boundaries, limits, streaming, edit locality."""

from __future__ import annotations

import hashlib
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from peerdistd.proto import chunking

MIB = 1024 * 1024


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _stream_cut(data: bytes, pieces: list[int]) -> list[int]:
    """Cut ``data`` fed in pieces of the given sizes, carrying the unsettled tail."""
    lengths: list[int] = []
    carry = b""
    pos = 0
    for size in [*pieces, len(data)]:
        piece = data[pos : pos + size]
        pos += len(piece)
        buf = carry + piece
        got = chunking.cut(buf, final=pos >= len(data))
        lengths += got
        carry = buf[sum(got) :]
        if pos >= len(data):
            break
    assert carry == b""
    return lengths


def _segment_hashes(data: bytes) -> list[bytes]:
    out, at = [], 0
    for length in chunking.cut(data, final=True):
        out.append(hashlib.sha512(data[at : at + length]).digest()[:32])
        at += length
    return out


def test_boundaries_are_pinned() -> None:
    # Every node must cut the same bytes the same way, or segment ids differ between them.
    # A change here (parameters, gear table, pyfastcdc) changes every V2 segment id.
    lengths = chunking.cut(_data(2024, 2 * MIB), final=True)
    assert lengths[:6] == [70522, 67155, 74809, 67510, 67467, 74724]
    assert len(lengths) == 30 and sum(lengths) == 2 * MIB
    digest = hashlib.sha256(repr(lengths).encode()).hexdigest()
    assert digest == "c2064c9846d3d742906e400ca5c82d37cb623fc20cd4d65c6d45dc033f0d5428"


def test_parameters() -> None:
    assert (chunking.MIN_SEGMENT, chunking.AVG_SEGMENT, chunking.MAX_SEGMENT) == (
        32 * 1024,
        64 * 1024,
        128 * 1024,
    )


def test_segments_respect_min_and_max() -> None:
    lengths = chunking.cut(_data(7, 8 * MIB), final=True)
    assert all(chunking.MIN_SEGMENT <= n <= chunking.MAX_SEGMENT for n in lengths[:-1])
    assert 0 < lengths[-1] <= chunking.MAX_SEGMENT
    assert 50 * 1024 < 8 * MIB / len(lengths) < 100 * 1024  # average near the documented 72 KiB


def test_low_entropy_content_is_cut_at_max() -> None:
    assert chunking.cut(bytes(MIB), final=True) == [chunking.MAX_SEGMENT] * 8
    assert chunking.cut(bytes(10), final=True) == [10]
    assert chunking.cut(b"", final=True) == []


def test_not_final_keeps_the_unsettled_tail() -> None:
    data = _data(3, MIB)
    settled = chunking.cut(data, final=False)
    assert sum(settled) > len(data) - 2 * chunking.MAX_SEGMENT
    assert len(data) - sum(settled) >= 0
    assert chunking.cut(data, final=True)[: len(settled)] == settled
    assert chunking.cut(data[: chunking.MAX_SEGMENT - 1], final=False) == []


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 300_000), min_size=1, max_size=30), st.integers(0, 2**16))
def test_streaming_cuts_equal_one_shot(pieces: list[int], seed: int) -> None:
    data = _data(seed, 1 * MIB + seed)
    assert _stream_cut(data, pieces) == chunking.cut(data, final=True)


def test_insert_near_front_keeps_most_segment_ids() -> None:
    data = _data(11, 4 * MIB)
    before = _segment_hashes(data)
    for edited in (
        data[:1000] + b"hello" + data[1000:],  # insert near the front
        data[:5000] + data[5007:],  # delete a few bytes
        data[: 2 * MIB] + b"!" + data[2 * MIB :],  # insert in the middle
        b"x" + data,  # prepend one byte
    ):
        after = _segment_hashes(edited)
        kept = len(set(before) & set(after))
        assert kept >= 0.8 * len(before), (kept, len(before))
        assert kept >= len(before) - 3  # only the segments around the edit change
