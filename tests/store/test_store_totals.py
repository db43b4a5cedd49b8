"""The cache index's running totals (bytes, blocks, segments, evictions).

They were one UPDATE per segment added and one per segment committed, and a SELECT before
every write (the room check): three of the six statements a V2 segment cost. Now a
transaction's changes are written with one UPDATE before its COMMIT and the committed row is
kept in memory. These tests hold them exact: equal to the rows after any mix of writes,
drops, evictions and failed transactions, and written once per transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdistd.proto.pccrc import HashAlgorithm
from peerdistd.store.blockcache import BlockCache, SegmentRecord
from peerdistd.store.index import UPDATE_ROWS, CacheIndex, Totals
from tests.content import BLOCK, content, content_information
from tests.store.test_store_evict import SIZE, v2_segment
from tests.store.test_store_stage import item


@contextmanager
def statements(cache: BlockCache) -> Iterator[list[str]]:
    """The SQL statements the cache's index runs meanwhile."""
    seen: list[str] = []
    db: sqlite3.Connection = cache._index._db
    db.set_trace_callback(seen.append)
    try:
        yield seen
    finally:
        db.set_trace_callback(None)


def from_rows(index: CacheIndex) -> tuple[int, int, int]:
    """(bytes, blocks, segments) counted from the rows themselves."""
    db = index._db
    size, blocks = db.execute("SELECT coalesce(sum(length), 0), count(*) FROM blocks").fetchone()
    (segments,) = db.execute("SELECT count(*) FROM segments").fetchone()
    return size, blocks, segments


def stored(index: CacheIndex) -> Totals:
    row = index._db.execute("SELECT bytes, blocks, segments, evictions FROM totals").fetchone()
    return Totals(*row)


def check(cache: BlockCache) -> None:
    index = cache._index
    kept = index.totals()
    assert kept == stored(index)  # what memory says is what the file says
    assert (kept.bytes, kept.blocks, kept.segments) == from_rows(index)


def test_a_run_and_its_commit_write_the_totals_once_each(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.stage([item(99)])
        cache.commit_staged()  # the kept row is read once, here or before
        with statements(cache) as seen:
            cache.stage([item(seed) for seed in range(8)])
            cache.commit_staged()
        updates = [s for s in seen if s.startswith("UPDATE totals")]
        reads = [s for s in seen if "FROM totals" in s]
        assert len(updates) == 2  # sixteen before: one per segment added, one per committed
        assert reads == []  # eight before: the room check of every write
        check(cache)
        assert cache.usage().segments == 9


def test_a_failed_transaction_leaves_the_totals_as_they_were(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.stage([item(1)])
        cache.commit_staged()
        index = cache._index
        before = index.totals()
        record, _ = v2_segment(2)
        with pytest.raises(RuntimeError), index.transaction():
            index.insert_segment(record, 10**6)
            assert index.totals().segments == before.segments + 1  # seen inside it
            raise RuntimeError("the write that fails after the row")
        assert index.totals() == before
        check(cache)


def test_dropping_a_segment_already_gone_counts_it_once(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.stage([item(1), item(2)])
        cache.commit_staged()
        index = cache._index
        rowid = index.segment(item(1)[0].segment_id)
        assert rowid is not None
        with index.transaction():
            index.delete_segments([rowid[0]], evicted=False)
        with index.transaction():  # a second drop of the same row, as a race would make
            index.delete_segments([rowid[0]], evicted=True)
        check(cache)
        assert index.totals().segments == 1  # was 0: every id asked for was subtracted
        assert index.totals().evictions == 0


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("stage"), st.lists(st.integers(0, 15), min_size=1, max_size=6)),
            st.tuples(st.just("put"), st.integers(0, 15)),
            st.tuples(st.just("commit"), st.just(0)),
            st.tuples(st.just("drop"), st.lists(st.integers(0, 15), max_size=4)),
            st.tuples(st.just("shrink"), st.integers(1, 6)),
            st.tuples(st.just("fail"), st.integers(0, 15)),
            st.tuples(st.just("verify"), st.just(0)),
        ),
        min_size=1,
        max_size=14,
    )
)
def test_the_totals_stay_equal_to_the_rows(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[str, object]]
) -> None:
    root = tmp_path_factory.mktemp("totals")
    with BlockCache.open(root, limit_bytes=1 << 30, sync=False) as cache:
        for op, arg in plan:
            if op == "stage":
                assert isinstance(arg, list)
                cache.stage([item(seed) for seed in arg])
            elif op == "put":
                assert isinstance(arg, int)
                record, data = v2_segment(arg)
                cache.add_segment(record)
                cache.put_block(record.segment_id, 0, data, record.hod)
            elif op == "commit":
                cache.commit_staged()
            elif op == "drop":
                assert isinstance(arg, list)
                cache.drop([v2_segment(seed)[0].segment_id for seed in arg])
            elif op == "shrink":  # evict down to a few segments' worth
                assert isinstance(arg, int)
                cache.commit_staged()
                cache.set_limit(limit_bytes=arg * SIZE)
                cache.set_limit(limit_bytes=1 << 30)
            elif op == "verify":  # re-hashes every block, then recounts the totals
                cache.commit_staged()
                cache.verify()
            else:
                assert isinstance(arg, int)
                index = cache._index
                with pytest.raises(RuntimeError), cache._lock, index.transaction():
                    index.insert_segment(v2_segment(100 + arg)[0], 10**6)
                    raise RuntimeError("rolled back")
            check(cache)
        cache.commit_staged()
        check(cache)
    with BlockCache.open(root, limit_bytes=1 << 30, sync=False) as cache:  # as the file says
        check(cache)


def test_a_new_segment_is_dated_by_its_commit_alone(tmp_path: Path) -> None:
    """No touch per new staged segment (its commit sets last_used); LRU order is kept."""
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.stage([item(50)])
        cache.commit_staged()
        with statements(cache) as seen:
            cache.stage([item(seed) for seed in range(8)])
            cache.stage([item(seed) for seed in range(8, 16)])
            cache.commit_staged()
        assert [s for s in seen if s.startswith("UPDATE segments SET last_used")] == []
        order = [sid for _, sid, _ in cache._index.lru()]
        assert order[0] == item(50)[0].segment_id  # the oldest is evicted first
        assert set(order[1:]) == {item(seed)[0].segment_id for seed in range(16)}
        # Reads still date a segment (touch), as before.
        record, _ = v2_segment(50)
        cache.read_block(record.segment_id, 0)
        cache.commit_staged()
        with cache._lock, cache._index.transaction():
            cache._flush_touches()
        assert next(iter(cache._index.lru()))[1] != record.segment_id
        check(cache)


def test_a_group_commit_updates_its_segments_a_chunk_at_a_time(tmp_path: Path) -> None:
    """One UPDATE per UPDATE_ROWS segments committed (was one per segment), each segment's
    row, the held map and the totals exact across the chunk boundary."""
    count = UPDATE_ROWS + 44
    items = [item(seed) for seed in range(count)]
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        for start in range(0, count, 8):
            cache.stage(items[start : start + 8])
        with statements(cache) as seen:
            cache.commit_staged()
        updates = [s for s in seen if s.startswith("UPDATE segments SET blocks")]
        assert len(updates) == 2
        index = cache._index
        for record, _, blocks in items:
            found = index.segment(record.segment_id)
            assert found is not None
            assert index.block_lengths(found[0]) == {0: len(blocks[0][1])}
        assert index.counts([r.segment_id for r, _, _ in items]) == {
            r.segment_id: 1 for r, _, _ in items
        }
        check(cache)


def test_a_run_of_new_segments_is_one_insert_with_their_proven_lists(tmp_path: Path) -> None:
    """One INSERT for the run's new segments, their proven hash lists in it (was an INSERT
    and, for a V1 segment with its full list, an UPDATE per segment)."""
    contents = [content(3 * BLOCK, seed=700 + n) for n in range(8)]
    segs = [content_information(data).segments[0] for data in contents]
    records = [
        SegmentRecord(s.segment_id, 1, HashAlgorithm.SHA256.value, s.hod, s.secret, s.length,
                      s.block_size)
        for s in segs
    ]  # fmt: skip
    run = [
        (record, seg.block_hashes, [(0, data[:BLOCK], seg.block_hashes[0])])
        for record, seg, data in zip(records, segs, contents, strict=True)
    ]
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        with statements(cache) as seen:
            cache.stage([*run, item(1)])
        inserts = [s for s in seen if s.startswith("INSERT INTO segments")]
        assert len(inserts) == 1
        assert [s for s in seen if s.startswith("UPDATE segments SET proven")] == []
        cache.commit_staged()
        index = cache._index
        for record, seg in zip(records, segs, strict=True):
            found = index.segment(record.segment_id)
            assert found is not None and found[1] == record
            assert index.proven(found[0]) == b"".join(seg.block_hashes)
        ids = [r.segment_id for r in records] + [item(1)[0].segment_id]
        assert index.counts(ids, proven_only=True) == dict.fromkeys(ids, 1)
        check(cache)


def test_two_writers_and_a_committer_at_once_keep_the_totals_exact(tmp_path: Path) -> None:
    """The kept row and the pending changes are the index's, under the cache's lock: two
    threads staging overlapping runs while a third commits and evicts leave them exact."""
    import threading

    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        start = threading.Barrier(3)
        failures: list[BaseException] = []

        def writer(offset: int) -> None:
            start.wait()
            for base in range(0, 96, 8):
                cache.stage([item(offset + base + n) for n in range(8)])

        def committer() -> None:
            start.wait()
            for round_ in range(12):
                cache.commit_staged()
                if round_ % 4 == 3:
                    cache.set_limit(limit_bytes=20 * SIZE)
                    cache.set_limit(limit_bytes=1 << 30)

        def run(target: object, *args: int) -> threading.Thread:
            def body() -> None:
                try:
                    target(*args)  # type: ignore[operator]
                except BaseException as exc:  # reported below, in the test's thread
                    failures.append(exc)

            thread = threading.Thread(target=body)
            thread.start()
            return thread

        threads = [run(writer, 0), run(writer, 40), run(committer)]
        for thread in threads:
            thread.join()
        assert failures == []
        cache.commit_staged()
        check(cache)
