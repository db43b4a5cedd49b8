"""Healing a damaged store: set the file aside, keep what can be proven, say so once.

A SQLite file that fails ``PRAGMA quick_check`` at open, or raises a corruption error
(``DatabaseError``, not an environmental ``OperationalError``) at run time, is renamed to
``<name>.damaged-<UTC time>`` (with its ``-wal``/``-shm``), kept for the administrator, and a
fresh file takes its place. What the damaged file still lets us read is salvaged only when it
proves itself: a cache segment row must be self-certifying (its id is the HMAC of its HoD,
:func:`check_record`) and each block row's hash must match the bytes in the segment file;
segment files nothing vouches for are removed. Rows are read by key and tables scanned from
both ends, so one damaged page costs the rows on it, not the table. Each heal leaves a
:class:`StoreNote` for ``GET /v1/status`` and logs one warning.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peerdistd.errors import PeerDistError
from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.cache_trust import proven_list
from peerdistd.store.cache_types import SegmentRecord, block_digest, check_block, check_record
from peerdistd.store.index import CacheIndex

log = logging.getLogger(__name__)

Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class StoreNote:
    """One heal of one store, for the status (``store_notes``) and the administrator."""

    store: str  # "cache" or "publications"
    time: float  # when, Unix seconds
    reason: str  # what SQLite said
    set_aside: str  # where the damaged file was moved
    kept: int  # rows salvaged (cache: blocks; publications: publications)
    dropped: int  # rows found but not provable, or unreadable files

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def set_aside(path: Path) -> Path:
    """Rename ``path`` (and its -wal/-shm) to ``<name>.damaged-<time>``; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(target.with_name(target.name + suffix))
    return target


def open_damaged(path: Path) -> sqlite3.Connection | None:
    """The set-aside file, opened to salvage from (None if SQLite cannot open it at all)."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA query_only=1")
    except sqlite3.Error:
        return None
    return db


def scan(db: sqlite3.Connection | None, query: str, params: tuple[Any, ...] = ()) -> list[Row]:
    """Every row ``query`` (ending in ``ORDER BY <key>``) still yields: read forwards up to a
    damaged page, then backwards from the end up to one; rows are returned in key order."""
    if db is None:
        return []
    found: dict[Any, Row] = {}
    for direction in ("ASC", "DESC"):
        try:
            for row in db.execute(f"{query} {direction}", params):
                if row[0] in found:
                    break  # met the forward scan: nothing was skipped
                found[row[0]] = row
        except sqlite3.Error:
            continue
        if direction == "ASC":
            break  # the forward scan went through: nothing to add from the other end
    return [found[k] for k in sorted(found)]


def _one(db: sqlite3.Connection | None, query: str, params: tuple[Any, ...]) -> Row | None:
    if db is None:
        return None
    try:
        row: Row | None = db.execute(query, params).fetchone()
    except sqlite3.Error:
        return None
    return row


def salvage_cache(damaged: Path, index: CacheIndex, files: SegmentFiles) -> tuple[int, int]:
    """Move into the fresh ``index`` what the damaged one proves about the segment files on
    disk; remove the other files. Returns (blocks kept, blocks or files dropped)."""
    db = open_damaged(damaged)
    kept = dropped = 0
    try:
        for rowid, path in list(files.rowids_on_disk()):
            if rowid < 0:
                if path.is_file() or path.is_symlink():
                    path.unlink(missing_ok=True)
                continue
            good, bad = _salvage_segment(db, index, files, rowid)
            kept += good
            dropped += bad
            if not good:
                files.remove(rowid)
    finally:
        if db is not None:
            db.close()
    return kept, dropped


def _salvage_segment(
    db: sqlite3.Connection | None, index: CacheIndex, files: SegmentFiles, rowid: int
) -> tuple[int, int]:
    row = _one(
        db,
        "SELECT segment_id, version, algorithm, hod, secret, length, block_size"
        " FROM segments WHERE id = ?",
        (rowid,),
    )
    if row is None:
        return 0, 1
    try:
        sid, version, algorithm, hod, secret, length, block_size = row
        record = SegmentRecord(sid, version, algorithm, hod, secret, length, block_size)
        check_record(record)
    except (PeerDistError, TypeError, ValueError):
        return 0, 1
    rows = scan(db, "SELECT idx, length, hash FROM blocks WHERE seg = ? ORDER BY idx", (rowid,))
    fd = files.open(rowid)
    if fd is None:
        return 0, len(rows) or 1
    good: list[tuple[int, int, bytes]] = []
    try:
        for idx, length, digest in rows:
            if _proves(record, fd, idx, length, bytes(digest)):
                good.append((idx, length, bytes(digest)))
    finally:
        os.close(fd)
    proof = _proof(db, record, rowid)
    if proof is not None:  # blocks that contradict a proven list never stay (docs/trust.md)
        size = len(record.hod)
        good = [g for g in good if g[2] == proof[g[0] * size : (g[0] + 1) * size]]
    if good:
        with index.transaction():
            index.insert_segment(record, rowid, rowid)
            index.insert_blocks(rowid, good, rowid)
            if proof is not None:
                index.set_proven(rowid, proof)
    return len(good), len(rows) - len(good)


def _proof(db: sqlite3.Connection | None, record: SegmentRecord, rowid: int) -> bytes | None:
    """The segment's proven hash list, if the damaged index still has one that hashes to HoD."""
    row = _one(db, "SELECT proven FROM segments WHERE id = ?", (rowid,))
    if row is None or not isinstance(row[0], bytes) or record.version != 1:
        return None
    size = len(record.hod)
    hashes = [row[0][i : i + size] for i in range(0, len(row[0]), size)]
    try:
        return proven_list(record, hashes)
    except PeerDistError:
        return None


def _proves(record: SegmentRecord, fd: int, idx: int, length: int, digest: bytes) -> bool:
    try:
        check_block(record, idx, length, digest)
    except PeerDistError:
        return False
    data = SegmentFiles.read(fd, idx * record.block_size, length)
    try:
        return len(data) == length and block_digest(record.algorithm, data) == digest
    except PeerDistError:
        return False


def heal(
    store: str, path: Path, reason: str, rebuild: Callable[[Path], tuple[int, int]]
) -> StoreNote:
    """Set ``path`` aside and ``rebuild(set_aside_path)`` a fresh one; log once, note it."""
    aside = set_aside(path)
    kept, dropped = rebuild(aside)
    log.warning(
        "%s store %s was damaged (%s): set aside as %s; kept %d provable rows, dropped %d",
        store,
        path,
        reason,
        aside,
        kept,
        dropped,
    )
    return StoreNote(store, time.time(), reason, str(aside), kept, dropped)


def iter_notes(*groups: list[StoreNote]) -> Iterator[dict[str, Any]]:
    for note in sorted((n for g in groups for n in g), key=lambda n: n.time):
        yield note.as_json()
