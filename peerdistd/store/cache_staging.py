"""Blocks written but not yet synced nor indexed: the block cache's group commit.

``put_blocks(durable=False)`` stages rows here, in the *open batch*. A commit closes that batch
(it becomes *committing*: its files are synced without the cache lock, then its rows are
indexed) while the next batch gathers. Batches are numbered and commit strictly one at a time,
in order, so "batch n is committed" means every block staged up to batch n is synced and
indexed: a request that staged blocks takes a :meth:`Staging.ticket` and is acknowledged once
``committed >= ticket``. A row is only ever indexed after its data was synced, so a crash loses
staged blocks (never acknowledged ones) and never serves one. The cache's lock serialises
every call.
"""

from __future__ import annotations

from collections.abc import Iterable

Rows = dict[int, tuple[int, bytes]]  # block index -> (length, hash)


class Staging:
    def __init__(self) -> None:
        self.staged: dict[int, Rows] = {}  # segment rowid -> rows of the open batch
        self.committing: dict[int, Rows] = {}  # the closed batch being synced right now
        self.created: set[int] = set()  # rowids whose file the open batch created
        self.creating: set[int] = set()  # the same, of the committing batch
        self.bytes = 0  # staged and committing bytes (not indexed yet)
        self.open_batch = 1  # the number of the batch that staged rows join
        self.committed = 0  # every batch up to this one is durable and indexed
        self.busy = False  # batch ``open_batch - 1`` is committing

    def __bool__(self) -> bool:
        return bool(self.staged)

    def blocks(self) -> int:
        return sum(len(rows) for rows in (*self.staged.values(), *self.committing.values()))

    def ticket(self) -> int:
        """The batch whose commit makes every block staged so far durable."""
        return self.open_batch if self.staged else self.open_batch - 1

    def add(self, rowid: int, rows: Iterable[tuple[int, int, bytes]], *, created: bool) -> None:
        staged = self.staged.setdefault(rowid, {})
        for index, length, digest in rows:
            staged[index] = (length, digest)
            self.bytes += length
        if created:
            self.created.add(rowid)

    def get(self, rowid: int, index: int) -> tuple[int, bytes] | None:
        """The staged or committing row of a block, if it has one."""
        return self.staged.get(rowid, {}).get(index) or self.committing.get(rowid, {}).get(index)

    def count(self, rowid: int) -> int:
        return len(self.staged.get(rowid, {})) + len(self.committing.get(rowid, {}))

    def begin_commit(self) -> int:
        """Close the open batch: its rows become committing; returns the batch's number."""
        assert not self.busy, "one commit at a time"
        self.committing, self.staged = self.staged, {}
        self.creating, self.created = self.created, set()
        self.busy = True
        self.open_batch += 1
        return self.open_batch - 1

    def end_commit(self) -> dict[int, Rows]:
        """The rows to index now (segments dropped meanwhile have left already)."""
        committing, self.committing = self.committing, {}
        self.creating = set()
        for rows in committing.values():
            self.bytes -= sum(length for length, _ in rows.values())
        return committing

    def finish(self, batch: int) -> None:
        """Batch ``batch`` is indexed (or failed and was forgotten): the next may commit."""
        self.committed = max(self.committed, batch)
        self.busy = False

    def drop_segment(self, rowid: int) -> None:
        for rows in (self.staged.pop(rowid, {}), self.committing.pop(rowid, {})):
            for length, _ in rows.values():
                self.bytes -= length

    def drop_blocks(self, rowid: int, indexes: Iterable[int]) -> set[int]:
        """Forget these blocks; returns those that were staged or committing (not indexed)."""
        staged = self.staged.get(rowid, {})
        committing = self.committing.get(rowid, {})
        found = set()
        for i in indexes:
            for rows in (staged, committing):
                row = rows.pop(i, None)
                if row is not None:
                    self.bytes -= row[0]
                    found.add(i)
        return found
