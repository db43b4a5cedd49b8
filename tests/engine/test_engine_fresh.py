"""The buffer of blocks just fetched and verified (engine.fresh): found only under the hash
they were verified against, bounded in bytes, oldest first out."""

from __future__ import annotations

from peerdistd.engine.fresh import FreshBlocks

SEG = bytes(32)
H1, H2 = b"\x01" * 32, b"\x02" * 32


def test_found_only_under_the_hash_it_was_verified_against() -> None:
    fresh = FreshBlocks()
    fresh.add(SEG, [(3, b"abc", H1)])
    assert fresh.get(SEG, 3, H1) == b"abc"
    assert fresh.get(SEG, 3, H2) is None  # another reader's content information
    assert fresh.get(SEG, 4, H1) is None and fresh.get(bytes(31) + b"\x01", 3, H1) is None
    fresh.add(SEG, [(3, b"xyz", H2)])  # verified again under another hash: that one now
    assert fresh.get(SEG, 3, H1) is None and fresh.get(SEG, 3, H2) == b"xyz"
    fresh.drop(SEG, 3)
    assert fresh.get(SEG, 3, H2) is None and fresh.held_bytes == 0


def test_bounded_in_bytes_oldest_first_out() -> None:
    fresh = FreshBlocks(limit=10)
    fresh.add(SEG, [(i, b"1234", H1) for i in range(3)])  # 12 bytes: block 0 goes
    assert [fresh.get(SEG, i, H1) for i in range(3)] == [None, b"1234", b"1234"]
    assert fresh.held_bytes == 8 and len(fresh) == 2
    fresh.add(SEG, [(9, b"x" * 11, H1)])  # larger than the whole buffer: not kept
    assert fresh.get(SEG, 9, H1) is None and fresh.held_bytes == 8
    fresh.clear()
    assert len(fresh) == 0 and fresh.held_bytes == 0
