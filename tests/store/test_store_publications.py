"""The publication store: CRUD, owners, persistence across restart and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peerdistd.errors import AccessDenied, DecodeError, InvalidParameter
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
    assert store.get("a") == pub("a", 1000, created=2.0)
    assert store.get("missing") is None
    assert [p.id for p in store.list()] == ["b", "a", "c"]
    assert [p.id for p in store.list(owner_uid=1000)] == ["a", "c"]
    assert store.list(owner_uid=4242) == []
    store.add(pub("a", 1000, n=1, created=5.0))  # the owner replaces it
    assert store.get("a") == pub("a", 1000, n=1, created=5.0)
    assert store.remove("b") is True
    assert store.remove("b") is False
    store.close()
    store = PublicationStore.open(path)
    assert store.list() == [pub("c", 1000, n=3, created=3.0), pub("a", 1000, n=1, created=5.0)]
    store.close()


def test_another_owner_cannot_replace(tmp_path: Path) -> None:
    store = PublicationStore.open(tmp_path / "p.sqlite")
    store.add(pub("a", 1000))
    with pytest.raises(AccessDenied):
        store.add(pub("a", 1001))
    assert store.get("a") == pub("a", 1000)
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
    assert store.get("a") == pub()
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
    assert store.get("kept") == Publication("kept", 7, 2, 4, 10, b"ci", 1.5, (bytes(32),))
    store.close()
