"""The hosted cache's store of unverified encrypted blocks (peerdistd.store.opaque)."""

from __future__ import annotations

from pathlib import Path

from peerdistd.store.opaque import OpaqueBlock, OpaqueStore

SEG = bytes(range(32))
IV = bytes(range(16))


def block(n: int) -> OpaqueBlock:
    return OpaqueBlock(1, IV, bytes([n]) * 1000)


SIZE = 5 + 16 + 1000  # head, IV, ciphertext


def test_kept_as_received_and_found_again_after_reopening(tmp_path: Path) -> None:
    store = OpaqueStore(tmp_path / "o", 10 * SIZE, 10 * SIZE).open()
    assert store.put(SEG, 3, block(3), "10.0.0.1")
    assert store.get(SEG, 3) == block(3) and store.held_blocks(SEG) == [3]
    assert not store.put(SEG, 3, block(9), "10.0.0.2")  # the first copy stays
    (tmp_path / "o" / ".x.tmp").write_bytes(b"half")  # an interrupted write
    again = OpaqueStore(tmp_path / "o", 10 * SIZE, 10 * SIZE).open()
    assert again.get(SEG, 3) == block(3) and again.used_bytes == SIZE
    assert not (tmp_path / "o" / ".x.tmp").exists()


def test_bounded_in_bytes_and_per_offerer(tmp_path: Path) -> None:
    store = OpaqueStore(tmp_path / "o", 3 * SIZE, 2 * SIZE).open()
    assert store.put(SEG, 0, block(0), "a") and store.put(SEG, 1, block(1), "a")
    assert not store.put(SEG, 2, block(2), "a")  # a's share is used up
    assert store.put(SEG, 2, block(2), "b") and store.put(SEG, 3, block(3), "b")
    assert store.used_bytes == 3 * SIZE  # the least recently used block made room
    assert store.held_blocks(SEG) == [1, 2, 3]
    assert len(list((tmp_path / "o").iterdir())) == 3
