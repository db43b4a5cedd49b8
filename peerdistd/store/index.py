"""The block cache's SQLite index: segments, verified blocks and running totals.

WAL mode with ``synchronous=NORMAL``: a commit survives kill -9 at once (it is in the WAL,
written before COMMIT returns) and a power loss may roll back the last commits, which only
forgets blocks, never invents one. The commits that acknowledge data to a client (group
commits, durable puts) are ``durable`` ones: they fsync the WAL too. A block row is inserted
only after its data was written (and fdatasync'ed, see blockcache), so every row describes
bytes that are on disk. Totals live in a one-row table updated in the same transactions, so
opening never scans the index.
Segment files are named by the AUTOINCREMENT row id (never reused, never derived from peer
bytes); dropped segments go through ``trash`` so a crash between commit and unlink leaves a
list of files to remove, not orphans.

``segments.proven`` is the segment's full V1 block hash list once one that hashes to its HoD
was seen ([MS-PCCRC] 2.2), NULL before: a block row is *proven* when its hash is the list's.
Version 1 indexes (without it) are migrated in place at open: every block unproven.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from peerdistd.errors import LocalError, StoreDamaged
from peerdistd.store.cache_held import HeldSegments
from peerdistd.store.cache_types import SegmentRecord

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segments(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    segment_id BLOB NOT NULL UNIQUE,
    version INTEGER NOT NULL, algorithm INTEGER NOT NULL,
    hod BLOB NOT NULL, secret BLOB NOT NULL,
    length INTEGER NOT NULL, block_size INTEGER NOT NULL,
    blocks INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,
    last_used INTEGER NOT NULL, proven BLOB);
CREATE INDEX IF NOT EXISTS segments_lru ON segments(last_used);
CREATE TABLE IF NOT EXISTS blocks(
    seg INTEGER NOT NULL, idx INTEGER NOT NULL, length INTEGER NOT NULL, hash BLOB NOT NULL,
    PRIMARY KEY (seg, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS totals(
    one INTEGER PRIMARY KEY CHECK (one = 1),
    bytes INTEGER NOT NULL, blocks INTEGER NOT NULL, segments INTEGER NOT NULL,
    evictions INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (1, 0, 0, 0, 0);
CREATE TABLE IF NOT EXISTS trash(seg INTEGER PRIMARY KEY);
"""

# Each segment's held blocks and whether they may be served to peers (V2, or V1 with a
# proven hash list): what the map in memory holds (cache_held).
_SELECT_HELD = "SELECT segment_id, blocks, (version = 2 OR proven IS NOT NULL) FROM segments"

_SELECT_SEGMENTS = (
    "SELECT id, segment_id, version, algorithm, hod, secret, length, block_size FROM segments"
)


# Segments per UPDATE of a group commit: 3 parameters each, well under SQLite's 32,766.
UPDATE_ROWS = 256
_INSERT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"  # placeholders only, no value
_INSERT_MANY = (
    "INSERT INTO segments(segment_id, version, algorithm, hod, secret, length, block_size,"
    " last_used, proven) VALUES {values} RETURNING id, segment_id"
)
_UPDATE_MANY = (
    "UPDATE segments SET blocks = blocks + v.column2, bytes = bytes + v.column3, last_used = ?"
    " FROM (VALUES {values}) AS v WHERE segments.id = v.column1"
    " RETURNING segment_id, blocks, (version = 2 OR proven IS NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Totals:
    bytes: int
    blocks: int
    segments: int
    evictions: int


def _plus(a: Totals, b: Totals) -> Totals:
    return Totals(
        a.bytes + b.bytes, a.blocks + b.blocks, a.segments + b.segments, a.evictions + b.evictions
    )


@contextmanager
def db_errors(what: str) -> Iterator[None]:
    """Translate sqlite3 errors into LocalError at the store boundary; a damaged file into
    StoreDamaged, which the store answers by healing (peerdistd.store.healing)."""
    try:
        yield
    except sqlite3.Error as exc:
        if is_corruption(exc):
            raise StoreDamaged(f"{what}: {exc}") from exc
        raise LocalError(f"cache index: {what}: {exc}") from exc


def is_corruption(exc: sqlite3.Error) -> bool:
    # OperationalError (locked, cannot open, disk I/O) is environmental, not a bad file.
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


class CacheIndex:
    """SQLite access for one BlockCache; the caller serialises calls with its own lock."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # The segments' block counts in memory (cache_held): answering a probe about
        # segments this node does not hold touches no SQL.
        # Read at the first answer (or by load_held, once the file is known sound).
        self._held = HeldSegments()
        self._held.stale = True
        # The running totals: changes made inside a transaction are summed here and written
        # with one UPDATE just before its COMMIT (they were one UPDATE per segment added and
        # per segment committed: two of the six statements a V2 segment cost), and the
        # row is kept in memory (as the open transaction sees it, before its pending changes),
        # so the room check before each write reads no SQL. Pending changes are dropped on
        # ROLLBACK; the kept row after any failure, and after a recount (read again).
        self._pending = Totals(0, 0, 0, 0)
        self._row: Totals | None = None

    @classmethod
    def open(cls, path: Path) -> CacheIndex | None:
        """Open or create the index; None if the file is corrupt or of another schema."""
        db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                db.close()
                return None
            if version == 1:  # schema 1 had no proven hash lists: every block unproven
                db.executescript(
                    "BEGIN IMMEDIATE;ALTER TABLE segments ADD COLUMN proven BLOB;"
                    f"PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
                )
            db.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )
            db.execute("SELECT bytes FROM totals").fetchone()
        except sqlite3.Error as exc:
            if db is not None:
                db.close()
            if is_corruption(exc):
                return None
            raise LocalError(f"cache index {path}: {exc}") from exc
        return cls(db)

    def close(self) -> None:
        with db_errors("close"):
            self._db.close()

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

        ``durable``: the COMMIT also fsyncs the WAL (``synchronous=FULL`` for this one), for
        rows that acknowledge data to a client; the WAL is sequential, so every earlier
        commit (segment rows...) becomes durable with it.
        """
        with db_errors("transaction"):
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    written = self._write_pending()
                except BaseException:
                    self._held.rollback()
                    self._forget_pending()
                    self._db.execute("ROLLBACK")
                    raise
                try:
                    self._db.execute("COMMIT")
                except BaseException:
                    # Committed or not, SQLite knows: read the table again before answering.
                    self._held.rollback()
                    self._held.stale = True
                    self._forget_pending()
                    raise
                self._held.commit()
                self._wrote(written)
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")

    def quick_check(self) -> bool:
        """SQLite's own consistency check of every page (O(size): for verify, not open)."""
        try:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError):
                raise LocalError(f"cache index: quick_check: {exc}") from exc
            return False
        return rows == [("ok",)]

    def totals(self) -> Totals:
        """The running totals, with the changes of the open transaction."""
        if self._row is None:
            row = self._db.execute("SELECT bytes, blocks, segments, evictions FROM totals")
            self._row = Totals(*row.fetchone())
        return _plus(self._row, self._pending)

    def _count(self, size: int = 0, blocks: int = 0, segments: int = 0, evicted: int = 0) -> None:
        """Change the running totals: at COMMIT inside a transaction, else at once."""
        change = Totals(size, blocks, segments, evicted)
        self._pending = _plus(self._pending, change)
        if not self._db.in_transaction:
            self._wrote(self._write_pending())

    def _write_pending(self) -> Totals:
        """Write the pending changes (one UPDATE) in the open transaction; what was written."""
        change, self._pending = self._pending, Totals(0, 0, 0, 0)
        if change != Totals(0, 0, 0, 0):
            self._db.execute(
                "UPDATE totals SET bytes = bytes + ?, blocks = blocks + ?,"
                " segments = segments + ?, evictions = evictions + ?",
                (change.bytes, change.blocks, change.segments, change.evictions),
            )
        return change

    def _wrote(self, written: Totals) -> None:
        if self._row is not None:
            self._row = _plus(self._row, written)

    def _forget_pending(self) -> None:
        self._pending = Totals(0, 0, 0, 0)
        self._row = None

    def max_clock(self) -> int:
        row = self._db.execute("SELECT max(last_used) FROM segments").fetchone()
        return int(row[0] or 0)

    def segment(self, segment_id: bytes) -> tuple[int, SegmentRecord] | None:
        row = self._db.execute(_SELECT_SEGMENTS + " WHERE segment_id = ?", (segment_id,)).fetchone()
        return None if row is None else (row[0], SegmentRecord(*row[1:]))

    def insert_segment(self, record: SegmentRecord, clock: int, rowid: int | None = None) -> int:
        """Add a segment; ``rowid`` keeps the one it had (salvage: its file is named by it)."""
        cur = self._db.execute(
            "INSERT INTO segments(id, segment_id, version, algorithm, hod, secret, length,"
            " block_size, last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (rowid, record.segment_id, record.version, record.algorithm, record.hod,
             record.secret, record.length, record.block_size, clock),
        )  # fmt: skip
        self._count(segments=1)
        self._note(record.segment_id, 0, record.version == 2)
        assert cur.lastrowid is not None
        return cur.lastrowid

    def insert_segments(
        self, items: Sequence[tuple[SegmentRecord, int, bytes | None]]
    ) -> dict[bytes, int]:
        """Add new segments (record, clock, proven hash list or None), each id once, with
        one INSERT per UPDATE_ROWS of them (a run of V2 segments was an INSERT per segment);
        their rowids by segment id."""
        rowids: dict[bytes, int] = {}
        for start in range(0, len(items), UPDATE_ROWS):
            part = items[start : start + UPDATE_ROWS]
            query = _INSERT_MANY.format(values=", ".join([_INSERT_ROW] * len(part)))
            params = [
                x
                for r, clock, proof in part
                for x in (r.segment_id, r.version, r.algorithm, r.hod, r.secret, r.length,
                          r.block_size, clock, proof)
            ]  # fmt: skip
            for rowid, segment_id in self._db.execute(query, params):
                rowids[bytes(segment_id)] = rowid
        for record, _, proof in items:
            self._note(record.segment_id, 0, record.version == 2 or proof is not None)
        self._count(segments=len(items))
        return rowids

    def segment_by_rowid(self, rowid: int) -> SegmentRecord | None:
        row = self._db.execute(_SELECT_SEGMENTS + " WHERE id = ?", (rowid,)).fetchone()
        return None if row is None else SegmentRecord(*row[1:])

    def blocks_after(self, rowid: int, index: int, limit: int) -> list[tuple[int, int, int, bytes]]:
        """(segment rowid, index, length, hash) of the next ``limit`` blocks after this one."""
        rows = self._db.execute(
            "SELECT seg, idx, length, hash FROM blocks WHERE (seg, idx) > (?, ?)"
            " ORDER BY seg, idx LIMIT ?",
            (rowid, index, limit),
        ).fetchall()
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]

    def blocks(self, rowid: int) -> list[tuple[int, int, bytes]]:
        """(index, length, hash) of every held block of a segment."""
        return self._db.execute(
            "SELECT idx, length, hash FROM blocks WHERE seg = ? ORDER BY idx", (rowid,)
        ).fetchall()

    def block_lengths(self, rowid: int) -> dict[int, int]:
        rows = self._db.execute("SELECT idx, length FROM blocks WHERE seg = ?", (rowid,))
        return dict(rows.fetchall())

    def proven(self, rowid: int) -> bytes | None:
        """The segment's proven block hash list (concatenated), None if none was seen."""
        row = self._db.execute("SELECT proven FROM segments WHERE id = ?", (rowid,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def set_proven(self, rowid: int, hashes: bytes) -> None:
        row = self._db.execute(
            "UPDATE segments SET proven = ? WHERE id = ?"
            " RETURNING segment_id, blocks, (version = 2 OR proven IS NOT NULL)",
            (hashes, rowid),
        ).fetchone()
        self._note_row(row)

    def block_hash(self, rowid: int, index: int) -> bytes | None:
        row = self._db.execute(
            "SELECT hash FROM blocks WHERE seg = ? AND idx = ?", (rowid, index)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def insert_blocks(self, rowid: int, rows: Sequence[tuple[int, int, bytes]], clock: int) -> None:
        """Add (index, length, hash) rows of one segment; the caller knows they are new."""
        self.insert_blocks_of([(rowid, rows)], clock)

    def insert_blocks_of(
        self, segments: Sequence[tuple[int, Sequence[tuple[int, int, bytes]]]], clock: int
    ) -> None:
        """:meth:`insert_blocks` for several segments (each rowid once): one INSERT of all
        their rows and one UPDATE per UPDATE_ROWS segments, where a group commit of V2
        segments was one UPDATE per segment (docs/benchmarks.md)."""
        self._db.executemany(
            "INSERT INTO blocks(seg, idx, length, hash) VALUES (?, ?, ?, ?)",
            [(rowid, i, n, digest) for rowid, rows in segments for i, n, digest in rows],
        )
        changes = [(rowid, len(rows), sum(n for _, n, _ in rows)) for rowid, rows in segments]
        for start in range(0, len(changes), UPDATE_ROWS):
            part = changes[start : start + UPDATE_ROWS]
            values = ", ".join(["(?, ?, ?)"] * len(part))  # placeholders only, no value
            query = _UPDATE_MANY.format(values=values)
            found = self._db.execute(
                query, (clock, *(x for change in part for x in change))
            ).fetchall()
            for row in found:
                self._note_row(row)
        self._count(sum(c[2] for c in changes), blocks=sum(c[1] for c in changes))

    def delete_blocks(self, rowid: int, rows: Sequence[tuple[int, int]]) -> None:
        """Forget (index, length) blocks of one segment (failed verification, truncation)."""
        self._db.executemany(
            "DELETE FROM blocks WHERE seg = ? AND idx = ?", [(rowid, idx) for idx, _ in rows]
        )
        dropped = sum(length for _, length in rows)
        row = self._db.execute(
            "UPDATE segments SET blocks = blocks - ?, bytes = bytes - ?"
            " WHERE id = ? RETURNING segment_id, blocks, (version = 2 OR proven IS NOT NULL)",
            (len(rows), dropped, rowid),
        ).fetchone()
        self._note_row(row)
        self._count(-dropped, blocks=-len(rows))

    def delete_segments(self, rowids: Sequence[int], *, evicted: bool) -> int:
        """Drop segments with their blocks, queue their files in trash; returns bytes freed."""
        freed = blocks = gone = 0
        for rowid in rowids:
            row = self._db.execute(
                "DELETE FROM segments WHERE id = ? RETURNING blocks, bytes, segment_id", (rowid,)
            ).fetchone()
            if row is None:
                continue
            gone += 1
            blocks += row[0]
            freed += row[1]
            self._note_gone(row[2])
            self._db.execute("DELETE FROM blocks WHERE seg = ?", (rowid,))
            self._db.execute("INSERT OR IGNORE INTO trash(seg) VALUES (?)", (rowid,))
        # Only the rows that were there (a segment dropped meanwhile counted once, not twice).
        self._count(-freed, -blocks, -gone, gone if evicted else 0)
        return freed

    def lru(self) -> Iterator[tuple[int, bytes, int]]:
        """(rowid, segment id, bytes) from the least recently used on, a page at a time."""
        offset = 0
        while True:
            page = self._db.execute(
                "SELECT id, segment_id, bytes FROM segments ORDER BY last_used, id"
                " LIMIT 256 OFFSET ?",
                (offset,),
            ).fetchall()
            for rowid, segment_id, size in page:
                yield rowid, bytes(segment_id), size
            if len(page) < 256:
                return
            offset += len(page)

    def touch(self, clocks: Iterable[tuple[int, int]]) -> None:
        self._db.executemany(
            "UPDATE segments SET last_used = ? WHERE id = ?",
            [(clock, rowid) for rowid, clock in clocks],
        )

    def counts(
        self, segment_ids: Sequence[bytes], *, proven_only: bool = False
    ) -> dict[bytes, int]:
        """Held block counts, as committed; ``proven_only``: of segments whose blocks are all
        proven (V2, or V1 with a proven list: blocks that contradict it never stay). From
        memory (cache_held), not SQL."""
        if self._held.stale and not self._db.in_transaction:
            self._load_held()
        return self._held.counts(segment_ids, proven_only=proven_only)

    def has_segment(self, segment_id: bytes) -> bool:
        """Whether the segment has a row (committed), from memory: safe without the cache
        lock, as a first cheap filter (the answer may be a moment old). After a failed
        commit every id may be (:meth:`counts` reads the table again)."""
        return self._held.stale or self._held.has(segment_id)

    def may_have_segment(self, segment_id: bytes) -> bool:
        """False only when the segment surely has no row: :meth:`has_segment`, and within a
        transaction (whose own rows the map learns at COMMIT) always True. A lookup of a
        segment the cache lacks (a read-ahead's check, a probe) then costs no SQL."""
        return self._db.in_transaction or self.has_segment(segment_id)

    def load_held(self) -> None:
        """Read every segment's block count into memory (sqlite3 errors are the caller's)."""
        self._load_held()

    def _load_held(self) -> None:
        rows = self._db.execute(_SELECT_HELD)
        self._held.reset((bytes(sid), n, bool(served)) for sid, n, served in rows)

    def _note(self, segment_id: bytes, blocks: int, served: bool) -> None:
        """A row changed: applied to the map at COMMIT (at once outside a transaction)."""
        self._held.put(segment_id, blocks, served)
        if not self._db.in_transaction:
            self._held.commit()

    def _note_gone(self, segment_id: bytes) -> None:
        self._held.delete(segment_id)
        if not self._db.in_transaction:
            self._held.commit()

    def _note_row(self, row: tuple[bytes, int, int] | None) -> None:
        if row is not None:  # None: no such row (dropped meanwhile), nothing changed
            self._note(row[0], row[1], bool(row[2]))

    def all_segments(self) -> list[tuple[int, SegmentRecord]]:
        rows = self._db.execute(_SELECT_SEGMENTS + " ORDER BY id")
        return [(row[0], SegmentRecord(*row[1:])) for row in rows]

    def trash(self) -> list[int]:
        return [row[0] for row in self._db.execute("SELECT seg FROM trash")]

    def clear_trash(self, rowids: Sequence[int]) -> None:
        self._db.executemany("DELETE FROM trash WHERE seg = ?", [(r,) for r in rowids])

    def recount(self) -> None:
        """Recompute every running total from the rows (after verify)."""
        self._db.execute(
            "UPDATE segments SET blocks = (SELECT count(*) FROM blocks WHERE seg = id),"
            " bytes = (SELECT coalesce(sum(length), 0) FROM blocks WHERE seg = id)"
        )
        self._db.execute(
            "UPDATE totals SET blocks = (SELECT count(*) FROM blocks),"
            " bytes = (SELECT coalesce(sum(length), 0) FROM blocks),"
            " segments = (SELECT count(*) FROM segments)"
        )
        # Counted from the rows: earlier changes of this transaction are in them already.
        self._pending = Totals(0, 0, 0, 0)
        self._row = None
        for row in self._db.execute(_SELECT_HELD):
            self._held.put(row[0], row[1], bool(row[2]))
