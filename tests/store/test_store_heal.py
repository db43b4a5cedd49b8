"""Damage met at run time (issue 8, "a store that heals"): SQLite reports a damaged page in
the middle of a call; the store sets the file aside, rebuilds from what it proves and answers
the call, instead of failing it and every later one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from peerdistd.store.blockcache import BlockCache
from peerdistd.store.publications import Publication, PublicationStore
from tests.content import content, content_information
from tests.store.test_store_integrity import assert_all_verified, v1_segment

PAGE = 4096


def _first_leaf(path: Path, table: str) -> int:
    db = sqlite3.connect(path)
    try:
        try:
            (page,) = db.execute(
                "SELECT min(pageno) FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (table,)
            ).fetchone()
        except sqlite3.OperationalError:
            pytest.skip("this SQLite has no dbstat table to find a table's pages with")
    finally:
        db.close()
    return int(page)


def _zero(path: Path, page: int) -> None:
    with path.open("r+b") as f:
        f.seek((page - 1) * PAGE)
        f.write(bytes(PAGE))


def test_cache_index_damaged_under_a_running_cache_heals_in_place(tmp_path: Path) -> None:
    segments = [v1_segment(seed, blocks=2) for seed in range(60)]
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:
        for record, rows in segments:
            c.add_segment(record)
            c.put_blocks(record.segment_id, rows)
    index = tmp_path / "index.sqlite"
    leaf = _first_leaf(index, "blocks")
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:  # healthy at open
        staged, staged_rows = v1_segment(99, blocks=1)
        c.add_segment(staged)
        c.put_blocks(staged.segment_id, staged_rows, durable=False)
        _zero(index, leaf)
        # What a big index does by itself: pages leave SQLite's cache and are read again.
        c._index._db.execute("PRAGMA shrink_memory")
        first = segments[0][0]
        assert c.held_blocks(first.segment_id) == []  # its rows were on the page: lost
        (note,) = c.notes()
        assert note.store == "cache" and "malformed" in note.reason
        assert Path(note.set_aside).exists()
        assert note.kept == c.usage().blocks > 0  # the rest was proven and kept
        assert c.commit_failures == 1  # the staged block is not durable: its waiter hears so
        assert_all_verified(c)
        c.add_segment(first)
        c.put_blocks(first.segment_id, segments[0][1])  # and it takes new blocks
        assert c.held_blocks(first.segment_id) == [0, 1]
        assert len(c.notes()) == 1


def _publication(n: int) -> Publication:
    ci = content_information(content(70_000, seed=n))
    return Publication(
        id=f"pub-{n:04d}" + "x" * 600,  # long rows: many pages
        owner_uid=0,
        version=1,
        algorithm=ci.algorithm.value,
        size=70_000,
        content_information=ci.to_bytes(),
        created=float(n),
        segment_ids=tuple(s.segment_id for s in ci.segments),
    )


def test_publication_store_damaged_while_open_heals_in_place(tmp_path: Path) -> None:
    path = tmp_path / "publications.db"
    store = PublicationStore.open(path)
    for n in range(60):
        store.add(_publication(n))
    store.close()
    leaf = _first_leaf(path, "publications")
    store = PublicationStore.open(path)
    try:
        _zero(path, leaf)
        store._db.execute("PRAGMA shrink_memory")
        listed = store.list()
        (note,) = store.notes()
        assert note.store == "publications" and note.kept == len(listed)
        assert 0 < len(listed) < 60
        assert all(p == _publication(int(p.id[4:8])) for p in listed)  # each one whole
        store.add(_publication(99))
        assert store.get(0, _publication(99).id) == _publication(99)
    finally:
        store.close()
