"""The content-information store: what each uid published, surviving restart and kill -9.

Its own SQLite file (WAL, ``synchronous=FULL``): publications are few and precious, so every
commit is fsync'ed, unlike the block cache whose rows can be lost safely. Segment ids are kept
as one concatenated blob (all of a publication's ids have its algorithm's digest size). A file
SQLite cannot read is moved aside to ``<name>.corrupt`` and the store starts empty.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peerdistd.errors import AccessDenied, DecodeError, InvalidParameter, LocalError
from peerdistd.store.cache_types import DIGEST_SIZE
from peerdistd.store.index import db_errors

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS publications(
    id TEXT PRIMARY KEY, owner_uid INTEGER NOT NULL, version INTEGER NOT NULL,
    algorithm INTEGER NOT NULL, size INTEGER NOT NULL, content_information BLOB NOT NULL,
    created REAL NOT NULL, segment_ids BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS publications_owner ON publications(owner_uid, created);
"""
_COLUMNS = "id, owner_uid, version, algorithm, size, content_information, created, segment_ids"
_INSERT = (
    "INSERT OR REPLACE INTO publications(id, owner_uid, version, algorithm, size,"
    " content_information, created, segment_ids) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class Publication:
    """Content a uid published: its content information and the segments it names."""

    id: str
    owner_uid: int
    version: int
    algorithm: int
    size: int
    content_information: bytes
    created: float
    segment_ids: tuple[bytes, ...]


def _check(pub: Publication) -> None:
    if not pub.id or len(pub.id) > MAX_ID_LENGTH or not pub.id.isprintable():
        raise InvalidParameter(f"publication id must be 1..{MAX_ID_LENGTH} printable characters")
    size = DIGEST_SIZE.get(pub.algorithm)
    if pub.version not in (1, 2) or size is None or pub.size < 0 or pub.owner_uid < 0:
        raise DecodeError(f"impossible publication: version {pub.version}, size {pub.size}")
    if any(len(sid) != size for sid in pub.segment_ids):
        raise DecodeError(f"segment ids must be {size} bytes for algorithm 0x{pub.algorithm:X}")


def _row_to_publication(row: tuple[Any, ...]) -> Publication:
    pub_id, owner, version, algorithm, size, info, created, ids = row
    width = DIGEST_SIZE.get(algorithm, 0)
    if not width or len(ids) % width:
        raise LocalError(f"publication {pub_id!r} is damaged in the store")
    segment_ids = tuple(ids[i : i + width] for i in range(0, len(ids), width))
    return Publication(pub_id, owner, version, algorithm, size, bytes(info), created, segment_ids)


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
        db.execute("SELECT count(*) FROM publications").fetchone()
    except BaseException:
        db.close()
        raise
    return db


class PublicationStore:
    """Publications by id; every call is one short SQLite statement under a lock."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path) -> PublicationStore:
        """Open or create the store file at ``path``."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            return cls(_connect(path))
        except sqlite3.OperationalError as exc:
            raise LocalError(f"publication store {path}: {exc}") from exc
        except sqlite3.DatabaseError:
            log.warning("publication store %s is corrupt; moved aside, starting empty", path)
        except OSError as exc:
            raise LocalError(f"publication store {path}: {exc}") from exc
        for suffix in ("", "-wal", "-shm"):
            damaged = path.with_name(path.name + suffix)
            if damaged.exists():
                damaged.replace(damaged.with_name(damaged.name + ".corrupt"))
        with db_errors("create publication store"):
            return cls(_connect(path))

    def close(self) -> None:
        with self._lock, db_errors("close"):
            self._db.close()

    def add(self, pub: Publication) -> None:
        """Store ``pub``, replacing an existing id of the same owner (AccessDenied otherwise)."""
        _check(pub)
        with self._lock, db_errors("add"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT owner_uid FROM publications WHERE id = ?", (pub.id,)
                ).fetchone()
                if row is not None and row[0] != pub.owner_uid:
                    raise AccessDenied(f"publication {pub.id!r} belongs to another user")
                self._db.execute(
                    _INSERT,
                    (pub.id, pub.owner_uid, pub.version, pub.algorithm, pub.size,
                     pub.content_information, pub.created, b"".join(pub.segment_ids)),
                )  # fmt: skip
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get(self, pub_id: str) -> Publication | None:
        with self._lock, db_errors("get"):
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM publications WHERE id = ?",  # noqa: S608
                (pub_id,),
            ).fetchone()
        return None if row is None else _row_to_publication(row)

    def list(self, owner_uid: int | None = None) -> builtins.list[Publication]:
        """Publications (of one owner if given), oldest first."""
        query = f"SELECT {_COLUMNS} FROM publications"  # noqa: S608
        with self._lock, db_errors("list"):
            if owner_uid is None:
                rows = self._db.execute(query + " ORDER BY created, id").fetchall()
            else:
                rows = self._db.execute(
                    query + " WHERE owner_uid = ? ORDER BY created, id", (owner_uid,)
                ).fetchall()
        return [_row_to_publication(row) for row in rows]

    def segment_ids(self) -> set[bytes]:
        """Every segment id some publication names (their blocks are kept by cache flushes)."""
        with self._lock, db_errors("segment_ids"):
            rows = self._db.execute("SELECT algorithm, segment_ids FROM publications").fetchall()
        found: set[bytes] = set()
        for algorithm, ids in rows:
            width = DIGEST_SIZE.get(algorithm, 0)
            if width and not len(ids) % width:
                found.update(bytes(ids[i : i + width]) for i in range(0, len(ids), width))
        return found

    def count(self) -> int:
        """How many publications there are (cheap: no content information is read)."""
        with self._lock, db_errors("count"):
            (n,) = self._db.execute("SELECT count(*) FROM publications").fetchone()
        return int(n)

    def remove(self, pub_id: str) -> bool:
        with self._lock, db_errors("remove"):
            cur = self._db.execute("DELETE FROM publications WHERE id = ?", (pub_id,))
            return cur.rowcount > 0
