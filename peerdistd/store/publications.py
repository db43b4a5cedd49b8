"""The content-information store: what each uid published, surviving restart and kill -9.

Its own SQLite file (WAL, ``synchronous=FULL``): publications are few and precious, so every
commit is fsync'ed before ``add`` returns (and so before publish answers 201). Segment ids are
kept as one concatenated blob (all of a publication's ids have its algorithm's digest size).
Ids are per uid: the key is (owner_uid, id), so two uids may each publish "image" and neither
can learn of the other's (issue 8: no existence oracle). Stores made when ids were one
namespace for the node are migrated at open; every row keeps its owner.
A damaged file (``PRAGMA quick_check`` at open, a corruption error at run time) is set aside
as ``<name>.damaged-<time>`` and replaced by one holding every publication it still proves
(see peerdistd.store.healing).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from peerdistd.errors import (
    DecodeError,
    InvalidParameter,
    LocalError,
    PeerDistError,
    StoreDamaged,
)
from peerdistd.proto.pccrc import ContentInformation
from peerdistd.store.cache_types import DIGEST_SIZE
from peerdistd.store.healing import StoreNote, heal, open_damaged, scan
from peerdistd.store.index import db_errors

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 1024

_TABLE = """CREATE TABLE IF NOT EXISTS {name}(
    id TEXT NOT NULL, owner_uid INTEGER NOT NULL, version INTEGER NOT NULL,
    algorithm INTEGER NOT NULL, size INTEGER NOT NULL, content_information BLOB NOT NULL,
    created REAL NOT NULL, segment_ids BLOB NOT NULL, PRIMARY KEY (owner_uid, id))"""
_INDEX = "CREATE INDEX IF NOT EXISTS publications_owner ON publications(owner_uid, created)"
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


def _values(pub: Publication) -> tuple[Any, ...]:
    return (pub.id, pub.owner_uid, pub.version, pub.algorithm, pub.size,
            pub.content_information, pub.created, b"".join(pub.segment_ids))  # fmt: skip


def _keyed_by_id_alone(db: sqlite3.Connection) -> bool:
    """True for a store made when publication ids were one namespace for the whole node."""
    columns = {row[1]: row[5] for row in db.execute("PRAGMA table_info(publications)")}
    return bool(columns) and columns.get("owner_uid") == 0  # owner_uid not part of the key


def _create_or_migrate(db: sqlite3.Connection) -> None:
    """The current schema, in one transaction: an old store's rows move to the (owner_uid, id)
    key with their owners (SQLite cannot change a primary key in place)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        if _keyed_by_id_alone(db):
            db.execute(_TABLE.format(name="publications_by_owner"))
            db.execute(
                f"INSERT INTO publications_by_owner({_COLUMNS})"  # noqa: S608
                f" SELECT {_COLUMNS} FROM publications"
            )
            db.execute("DROP TABLE publications")
            db.execute("ALTER TABLE publications_by_owner RENAME TO publications")
            log.info("publication store migrated: publication ids are now per uid")
        else:
            db.execute(_TABLE.format(name="publications"))
        db.execute(_INDEX)
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        _create_or_migrate(db)
        db.execute("SELECT count(*) FROM publications").fetchone()
    except BaseException:
        db.close()
        raise
    return db


def _quick_check(db: sqlite3.Connection) -> bool:
    try:
        return db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    except sqlite3.OperationalError:
        raise
    except sqlite3.DatabaseError:
        return False


def _salvage(aside: Path, path: Path) -> tuple[sqlite3.Connection, int, int]:
    """A fresh store at ``path`` with every publication of ``aside`` that still reads whole
    and is consistent (its content information parses and names its segment ids)."""
    with db_errors("create publication store"):
        db = _connect(path)
    good: builtins.list[Publication] = []
    dropped = 0
    old = open_damaged(aside)
    for row in scan(old, f"SELECT rowid, {_COLUMNS} FROM publications ORDER BY rowid"):  # noqa: S608
        try:
            pub = _row_to_publication(row[1:])
            _check(pub)
            ids = tuple(
                s.segment_id for s in ContentInformation.parse(pub.content_information).segments
            )
            if ids != pub.segment_ids:
                raise DecodeError("segment ids differ from the content information's")
        except (PeerDistError, TypeError, ValueError):
            dropped += 1
            continue
        good.append(pub)
    if old is not None:
        old.close()
    with db_errors("salvage publications"):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(_INSERT, [_values(pub) for pub in good])
        db.execute("COMMIT")
    return db, len(good), dropped


class PublicationStore:
    """Publications by (owner uid, id); every call is one short SQLite statement under a lock.

    A damaged file (at open: ``PRAGMA quick_check``; at run time: a corruption error) is set
    aside and replaced by one with every publication it still proves (store.healing), noted
    in :meth:`notes` for the status; the call that met the damage then runs again.
    """

    def __init__(self, db: sqlite3.Connection, path: Path | None = None) -> None:
        self._db = db
        self._path = path
        self._lock = threading.Lock()
        self._notes: list[StoreNote] = []

    @classmethod
    def open(cls, path: Path) -> PublicationStore:
        """Open or create the store file at ``path``."""
        path = Path(path)
        reason = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = _connect(path)
            if _quick_check(db):
                return cls(db, path)
            db.close()
            reason = "PRAGMA quick_check failed"
        except sqlite3.OperationalError as exc:
            raise LocalError(f"publication store {path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            reason = str(exc)
        except OSError as exc:
            raise LocalError(f"publication store {path}: {exc}") from exc
        store = cls(sqlite3.connect(":memory:"), path)
        store._heal_locked(reason)
        return store

    def notes(self) -> builtins.list[StoreNote]:
        """Each time a damaged file was set aside and rebuilt (for the status)."""
        with self._lock:
            return builtins.list(self._notes)

    def _heal_locked(self, reason: str) -> None:
        if self._path is None:
            raise LocalError(f"publication store damaged: {reason}")
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        made: builtins.list[sqlite3.Connection] = []

        def rebuild(aside: Path) -> tuple[int, int]:
            db, kept, dropped = _salvage(aside, self._path)  # type: ignore[arg-type]
            made.append(db)
            return kept, dropped

        self._notes.append(heal("publications", self._path, reason, rebuild))
        self._db = made[0]

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` under the lock; a damaged file is healed and ``fn`` runs once more."""
        with self._lock:
            try:
                with db_errors(what):
                    return fn()
            except StoreDamaged as exc:
                self._heal_locked(str(exc))
                with db_errors(what):
                    return fn()

    def close(self) -> None:
        with self._lock, db_errors("close"):
            self._db.close()

    def add(self, pub: Publication) -> None:
        """Store ``pub``, replacing its owner's publication of the same id if there is one."""
        _check(pub)
        self._run("add", lambda: self._db.execute(_INSERT, _values(pub)))

    def get(self, owner_uid: int, pub_id: str) -> Publication | None:
        """``owner_uid``'s publication ``pub_id`` (another uid's of the same id is not it)."""
        query = f"SELECT {_COLUMNS} FROM publications WHERE owner_uid = ? AND id = ?"  # noqa: S608
        row = self._run("get", lambda: self._db.execute(query, (owner_uid, pub_id)).fetchone())
        return None if row is None else _row_to_publication(row)

    def list(self, owner_uid: int | None = None) -> builtins.list[Publication]:
        """Publications (of one owner if given), oldest first."""
        query = f"SELECT {_COLUMNS} FROM publications"  # noqa: S608

        def rows() -> builtins.list[Any]:
            if owner_uid is None:
                return self._db.execute(query + " ORDER BY created, id, owner_uid").fetchall()
            return self._db.execute(
                query + " WHERE owner_uid = ? ORDER BY created, id", (owner_uid,)
            ).fetchall()

        return [_row_to_publication(row) for row in self._run("list", rows)]

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

        def count() -> int:
            return int(self._db.execute("SELECT count(*) FROM publications").fetchone()[0])

        return self._run("count", count)

    def remove(self, owner_uid: int, pub_id: str) -> bool:
        def remove() -> bool:
            found = self._db.execute(
                "DELETE FROM publications WHERE owner_uid = ? AND id = ?", (owner_uid, pub_id)
            )
            return found.rowcount > 0

        return self._run("remove", remove)
