"""The held segments in memory (store.cache_held): a probe about segments this node does not
hold is answered without SQL, and the block counts stay exactly what the index says through
add, put, group commit, proof, drop, eviction, verify, rollback and heal."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from peerdistd.store.blockcache import BlockCache
from peerdistd.store.cache_heal import heal_in_place
from tests.store.test_store_cache import make_segment
from tests.store.test_store_evict import SIZE, store, v2_segment


def sql_counts(cache: BlockCache, proven_only: bool) -> dict[bytes, int]:
    """What the index's table says: the answer the map must give, for every segment."""
    proven = " AND (version = 2 OR proven IS NOT NULL)" if proven_only else ""
    rows = cache._index._db.execute(
        f"SELECT segment_id, blocks FROM segments WHERE blocks > 0{proven}"
    )
    return {bytes(sid): n for sid, n in rows}


def assert_exact(cache: BlockCache, ids: Sequence[bytes]) -> None:
    for proven_only in (False, True):
        assert cache._index.counts(list(ids), proven_only=proven_only) == sql_counts(
            cache, proven_only
        )
    rows = {bytes(r[0]) for r in cache._index._db.execute("SELECT segment_id FROM segments")}
    assert {s for s in ids if cache._index.has_segment(s)} == rows


def test_a_probe_about_segments_not_held_touches_no_sql(tmp_path: Path) -> None:
    # Ten nodes reading one V2 content together got ~15,000 probes each, nearly all about
    # segments they did not hold; each cost SQLite lookups (docs/benchmarks.md).
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:
        held = store(c, 1)
        statements: list[str] = []
        c._index._db.set_trace_callback(statements.append)
        try:
            strangers = [os.urandom(32) for _ in range(14)]
            assert c.block_counts(strangers, proven_only=True) == {}
            assert statements == []
            assert c.block_counts([*strangers, held], proven_only=True) == {held: 1}
            assert statements == []  # a held one is answered from memory too
        finally:
            c._index._db.set_trace_callback(None)


def test_a_read_or_check_of_a_segment_not_held_touches_no_sql(tmp_path: Path) -> None:
    # A fetching node checks every block ahead of its reader (read-ahead, "wanted"): each
    # check of a segment not yet held was a SELECT under the cache's lock, which every other
    # thread waited on (docs/benchmarks.md, "The cache's lock").
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:
        held = store(c, 1)
        record, _ = v2_segment(2)
        statements: list[str] = []
        c._index._db.set_trace_callback(statements.append)
        try:
            assert not c.has_block(record.segment_id, 0)
            assert c.read_block(record.segment_id, 0) is None
            assert c.segment(record.segment_id) is None
            assert c.held_blocks(record.segment_id) == []
            assert statements == []
        finally:
            c._index._db.set_trace_callback(None)
        c.add_segment(record)  # and once it has a row, it is found
        assert c.segment(record.segment_id) == record
        assert c.has_block(held, 0)


def test_the_counts_stay_exact_through_every_change(tmp_path: Path) -> None:
    ids: list[bytes] = []
    with BlockCache.open(tmp_path, limit_bytes=4 * SIZE, sync=False) as c:
        ids += [store(c, n) for n in range(3)]  # durable puts
        assert_exact(c, ids)
        record, data = v2_segment(10)
        c.add_segment(record)  # a row without blocks: asked about, but holds none
        ids.append(record.segment_id)
        assert_exact(c, ids)
        assert c.block_counts([record.segment_id]) == {}
        c.put_blocks(record.segment_id, [(0, data, record.hod)], durable=False)
        assert c.block_counts([record.segment_id]) == {record.segment_id: 1}  # staged
        c.commit_staged()
        assert_exact(c, ids)
        # V1 with a range's partial list: held, not servable; the full list proves it.
        v1, blocks = make_segment(20, length=2 * 65536)
        c.set_limit(limit_bytes=1 << 30)
        c.add_segment(v1)
        c.put_blocks(v1.segment_id, blocks[:1])
        ids.append(v1.segment_id)
        assert_exact(c, ids)
        assert c.block_counts([v1.segment_id], proven_only=True) == {}
        c.add_segment(v1, [h for _, _, h in blocks])
        assert c.block_counts([v1.segment_id], proven_only=True) == {v1.segment_id: 1}
        assert_exact(c, ids)
        c.drop([ids[0]])
        assert_exact(c, ids)
        c.set_limit(limit_bytes=3 * SIZE + 65536)  # evicts down to the limit
        ids += [store(c, n) for n in range(30, 33)]
        assert c.usage().evictions > 0
        assert_exact(c, ids)
        # A block that rots on disk: verify drops its row, and the count follows.
        victim = ids[-1]
        path = c._files.path(c._table.load(victim).rowid)  # type: ignore[union-attr]
        path.write_bytes(b"x" * SIZE)
        c.verify()
        assert c.block_counts([victim]) == {}
        assert_exact(c, ids)
        c.flush()
        assert_exact(c, ids)
        assert c.block_counts(ids) == {}


def test_a_rolled_back_change_leaves_the_counts_as_committed(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:
        held = store(c, 1)
        index = c._index
        rowid = c._table.load(held).rowid  # type: ignore[union-attr]
        with pytest.raises(RuntimeError), index.transaction():
            index.delete_blocks(rowid, [(0, SIZE)])
            raise RuntimeError("the caller failed half way")
        assert c.block_counts([held]) == {held: 1}
        with pytest.raises(RuntimeError), index.transaction():
            index.delete_segments([rowid], evicted=False)
            raise RuntimeError("the caller failed half way")
        assert c.block_counts([held]) == {held: 1}
        assert_exact(c, [held])


def test_a_failed_commit_reads_the_table_again(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:
        held = store(c, 1)
        index = c._index
        rowid = c._table.load(held).rowid  # type: ignore[union-attr]
        real = index._db

        class FailingCommit:
            """The connection, except that COMMIT fails once (a full disk, an I/O error)."""

            in_transaction = property(lambda self: real.in_transaction)

            def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
                if sql == "COMMIT":
                    index._db = real
                    real.execute("ROLLBACK")
                    raise sqlite3.OperationalError("disk I/O error")
                return real.execute(sql, *args)

        index._db = FailingCommit()  # type: ignore[assignment]
        with pytest.raises(Exception, match="disk I/O error"), index.transaction():
            index.delete_segments([rowid], evicted=False)
        assert c.block_counts([held]) == {held: 1}  # rolled back, and so is the map
        assert_exact(c, [held])


def test_a_healed_index_is_counted_again(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:
        ids = [store(c, n) for n in range(4)]
        heal_in_place(c, "a test")
        assert c.block_counts(ids) == dict.fromkeys(ids, 1)
        assert_exact(c, ids)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:  # and at open
        assert c.block_counts(ids, proven_only=True) == dict.fromkeys(ids, 1)
        assert_exact(c, ids)
