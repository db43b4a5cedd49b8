"""Blocks just fetched from peers and verified, kept in memory for the read they were
fetched for (docs/benchmarks.md, "LAN speed").

A block fetched from a peer is decrypted and hashed against the fetching reader's block
hash; reading it back from the cache file and hashing it again moments later, for the very
read that asked for it, cost the fetching daemon a pread and a SHA-256 per block (about a
third of its CPU per block). These bytes are handed out instead, under the same rule as
the cache's own reads (docs/trust.md): only to a reader whose content information names
exactly the hash they were verified against, and only while the cache still holds the
block under that hash (so emptying or evicting the cache takes them away as well). Bounded
in bytes, oldest first out; a block read to its end leaves at once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

FRESH_BYTES = 32 * 1024 * 1024  # read-ahead is 8 MiB per reader: room for a few readers

Key = tuple[bytes, int]  # (segment id, block index)


class FreshBlocks:
    """Verified plaintext blocks by (segment id, index), each with the hash it matched.

    Thread-safe: the loop adds and drops, the local read-ahead's worker thread looks up."""

    def __init__(self, limit: int = FRESH_BYTES) -> None:
        self.limit = limit
        self._blocks: OrderedDict[Key, tuple[bytes, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def add(self, segment_id: bytes, rows: Iterable[tuple[int, bytes, bytes]]) -> None:
        """Keep ``(index, data, hash)`` rows: ``data`` was verified to hash to ``hash``."""
        with self._lock:
            for index, data, digest in rows:
                if len(data) > self.limit:
                    continue
                old = self._blocks.pop((segment_id, index), None)
                if old is not None:
                    self._bytes -= len(old[1])
                self._blocks[(segment_id, index)] = (digest, data)
                self._bytes += len(data)
            while self._bytes > self.limit:
                _, (_, gone) = self._blocks.popitem(last=False)
                self._bytes -= len(gone)

    def get(self, segment_id: bytes, index: int, digest: bytes) -> bytes | None:
        """The block's bytes if they were verified against exactly ``digest``."""
        found = self._blocks.get((segment_id, index))
        if found is None or found[0] != digest:
            return None
        return found[1]

    def drop(self, segment_id: bytes, index: int) -> None:
        with self._lock:
            old = self._blocks.pop((segment_id, index), None)
            if old is not None:
                self._bytes -= len(old[1])

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._bytes = 0
