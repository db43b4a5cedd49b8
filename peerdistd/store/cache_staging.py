"""Blocks written but not yet synced nor indexed: the block cache's group commit.

``put_blocks(durable=False)`` stages rows here; ``commit_staged`` moves them to *committing*
while their files are synced without the cache lock, then indexes them. A row is only ever
indexed after its data was synced, so a crash loses staged blocks and never serves one.
The cache's lock serialises every call.
"""

from __future__ import annotations

from collections.abc import Iterable

Rows = dict[int, tuple[int, bytes]]  # block index -> (length, hash)


class Staging:
    def __init__(self) -> None:
        self.staged: dict[int, Rows] = {}  # segment rowid -> rows
        self.committing: dict[int, Rows] = {}  # being synced right now
        self.bytes = 0  # staged bytes (not those committing)

    def __bool__(self) -> bool:
        return bool(self.staged)

    def blocks(self) -> int:
        return sum(len(rows) for rows in self.staged.values())

    def add(self, rowid: int, rows: Iterable[tuple[int, int, bytes]]) -> None:
        staged = self.staged.setdefault(rowid, {})
        for index, length, digest in rows:
            staged[index] = (length, digest)
            self.bytes += length

    def get(self, rowid: int, index: int) -> tuple[int, bytes] | None:
        """The staged or committing row of a block, if it has one."""
        return self.staged.get(rowid, {}).get(index) or self.committing.get(rowid, {}).get(index)

    def count(self, rowid: int) -> int:
        """Blocks of a segment staged or being committed: both are held (reads see them), and
        a holder that counted only the staged ones answered discovery "no match" while a
        group commit was syncing."""
        return len(self.staged.get(rowid, {}).keys() | self.committing.get(rowid, {}).keys())

    def begin_commit(self) -> int:
        """Move every staged row to committing; returns their bytes."""
        self.committing, self.staged = self.staged, {}
        committed, self.bytes = self.bytes, 0
        return committed

    def end_commit(self) -> dict[int, Rows]:
        """The rows to index now (segments dropped meanwhile have left already)."""
        committing, self.committing = self.committing, {}
        return committing

    def drop_segment(self, rowid: int) -> None:
        for length, _ in self.staged.pop(rowid, {}).values():
            self.bytes -= length
        self.committing.pop(rowid, None)

    def drop_blocks(self, rowid: int, indexes: Iterable[int]) -> set[int]:
        """Forget these blocks; returns those that were staged or committing (not indexed)."""
        staged = self.staged.get(rowid, {})
        committing = self.committing.get(rowid, {})
        found = set()
        for i in indexes:
            if i in staged:
                self.bytes -= staged.pop(i)[0]
                found.add(i)
            if committing.pop(i, None) is not None:
                found.add(i)
        return found
