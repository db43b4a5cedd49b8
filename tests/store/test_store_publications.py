"""The publication store: CRUD, owners, persistence across restart and kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peerdistd.errors import DecodeError, InvalidParameter
from peerdistd.store.publications import Publication, PublicationStore


def pub(pub_id: str = "a", owner: int = 1000, n: int = 2, created: float = 1.0) -> Publication:
    ids = tuple(bytes([i]) * 32 for i in range(n))
    return Publication(pub_id, owner, 1, 0x800C, n * 1000, b"\x00\x01info" + pub_id.encode(),
                       created, ids)  # fmt: skip


def test_crud_and_persistence(tmp_path: Path) -> None:
    path = tmp_path / "state" / "publications.sqlite"
    store = PublicationStore.open(path)
    store.add(pub("a", 1000, created=2.0))
    store.add(pub("b", 1001, n=0, created=1.0))
    store.add(pub("c", 1000, n=3, created=3.0))
    assert store.get(1000, "a") == pub("a", 1000, created=2.0)
    assert store.get(1000, "missing") is None
    assert [p.id for p in store.list()] == ["b", "a", "c"]
    assert [p.id for p in store.list(owner_uid=1000)] == ["a", "c"]
    assert store.list(owner_uid=4242) == []
    store.add(pub("a", 1000, n=1, created=5.0))  # the owner replaces it
    assert store.get(1000, "a") == pub("a", 1000, n=1, created=5.0)
    assert store.remove(1000, "b") is False  # uid 1001's
    assert store.remove(1001, "b") is True
    assert store.remove(1001, "b") is False
    store.close()
    store = PublicationStore.open(path)
    assert store.list() == [pub("c", 1000, n=3, created=3.0), pub("a", 1000, n=1, created=5.0)]
    store.close()


def test_ids_are_per_uid(tmp_path: Path) -> None:
    store = PublicationStore.open(tmp_path / "p.sqlite")
    store.add(pub("a", 1000))
    store.add(pub("a", 1001, n=3))  # another uid's "a": a publication of its own
    assert store.get(1000, "a") == pub("a", 1000)
    assert store.get(1001, "a") == pub("a", 1001, n=3)
    assert store.get(0, "a") is None
    assert store.count() == 2
    assert store.remove(1001, "a") is True
    assert store.get(1000, "a") == pub("a", 1000)
    store.close()


# The store's layout when ids were one namespace for the node (before they were per uid).
OLD_SCHEMA = """
CREATE TABLE publications(
    id TEXT PRIMARY KEY, owner_uid INTEGER NOT NULL, version INTEGER NOT NULL,
    algorithm INTEGER NOT NULL, size INTEGER NOT NULL, content_information BLOB NOT NULL,
    created REAL NOT NULL, segment_ids BLOB NOT NULL);
CREATE INDEX publications_owner ON publications(owner_uid, created);
"""


def test_a_store_with_one_namespace_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    rows = [pub("a", 1000, created=1.0), pub("b", 0, n=1, created=2.0)]
    for p in rows:
        old.execute(
            "INSERT INTO publications VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (p.id, p.owner_uid, p.version, p.algorithm, p.size, p.content_information,
             p.created, b"".join(p.segment_ids)),
        )  # fmt: skip
    old.commit()
    old.close()
    store = PublicationStore.open(path)
    assert store.list() == rows  # every row kept, with its owner
    assert store.get(1000, "a") == rows[0] and store.get(0, "b") == rows[1]
    store.add(pub("a", 1001, n=3, created=3.0))  # refused (ACCESS_DENIED) before
    assert store.get(1000, "a") == rows[0]
    assert store.notes() == []  # migrated, not healed
    store.close()
    store = PublicationStore.open(path)  # opens again as it is
    assert len(store.list()) == 3
    store.close()


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (Publication("", 1, 1, 0x800C, 0, b"", 0.0, ()), InvalidParameter),
        (Publication("x" * 1025, 1, 1, 0x800C, 0, b"", 0.0, ()), InvalidParameter),
        (Publication("a\nb", 1, 1, 0x800C, 0, b"", 0.0, ()), InvalidParameter),
        (Publication("a", 1, 3, 0x800C, 0, b"", 0.0, ()), DecodeError),
        (Publication("a", 1, 1, 0x1234, 0, b"", 0.0, ()), DecodeError),
        (Publication("a", 1, 1, 0x800C, 0, b"", 0.0, (b"short",)), DecodeError),
        (Publication("a", 1, 2, 0x04, 0, b"", 0.0, (bytes(48),)), DecodeError),
    ],
)
def test_invalid_publications_rejected(tmp_path: Path, bad: Publication, error: type) -> None:
    store = PublicationStore.open(tmp_path / "p.sqlite")
    with pytest.raises(error):
        store.add(bad)
    assert store.list() == []
    store.close()


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    path.write_bytes(b"garbage" * 1000)
    store = PublicationStore.open(path)
    assert store.list() == []
    store.add(pub())
    assert store.get(1000, "a") == pub()
    (note,) = store.notes()
    store.close()
    assert note.store == "publications" and (note.kept, note.dropped) == (0, 0)
    assert Path(note.set_aside).read_bytes() == b"garbage" * 1000
    assert Path(note.set_aside).name.startswith("p.sqlite.damaged-")


CHILD = textwrap.dedent(
    """
    import sys
    from peerdistd.store.publications import Publication, PublicationStore
    store = PublicationStore.open(sys.argv[1])
    store.add(Publication("kept", 7, 2, 4, 10, b"ci", 1.5, (bytes(32),)))
    print("added", flush=True)
    sys.stdin.read()
    """
)


def test_publication_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "p.sqlite"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == b"added\n"
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    child.stdin.close()
    store = PublicationStore.open(path)
    assert store.get(7, "kept") == Publication("kept", 7, 2, 4, 10, b"ci", 1.5, (bytes(32),))
    store.close()
