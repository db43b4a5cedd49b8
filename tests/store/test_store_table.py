"""The table of loaded segments (store.cache_segments): bounded by blocks and by segments, its
open files bounded apart (docs/benchmarks.md, "The cache's lock").

A bound of 1024 segments, descriptors included, made a node serving a 1 GiB V2 content
(8,192 segments) in order load every segment from SQL and open its file again.
"""

from __future__ import annotations

import os
from pathlib import Path

from peerdistd.store.blockcache import BlockCache
from tests.store.test_store_cache import make_segment
from tests.store.test_store_evict import v2_segment

SIZE = 1000


def open_files(root: Path) -> int:
    """The process's descriptors open on files under ``root``."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        name = os.path.basename(target)
        count += target.startswith(str(root)) and name != "lock" and not name.startswith("index")
    return count


def stored(cache: BlockCache, count: int) -> list[bytes]:
    ids = []
    for seed in range(count):
        record, data = v2_segment(seed, SIZE)
        cache.stage([(record, None, [(0, data, record.hod)])])
        ids.append(record.segment_id)
    cache.commit_staged()
    return ids


def test_a_peer_reading_a_large_v2_content_in_order_twice_meets_no_sql(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        ids = stored(cache, 1500)  # more than the 1024 segments the table held before
        statements: list[str] = []
        for _ in range(2):
            statements.clear()
            cache._index._db.set_trace_callback(statements.append)
            try:
                assert all(cache.read_proven(sid, 0) is not None for sid in ids)
            finally:
                cache._index._db.set_trace_callback(None)
        assert [s for s in statements if s.lstrip().upper().startswith("SELECT")] == []


def test_open_files_are_bounded_apart_from_the_table(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache._table._files_limit = 8
        ids = stored(cache, 40)
        for sid in ids:
            assert cache.read_proven(sid, 0) is not None
        assert open_files(tmp_path) <= 8
        with cache.pin(ids[0]):  # a pinned segment keeps its file through any number of others
            assert cache.read_proven(ids[0], 0) is not None
            fd = cache._table.get(ids[0]).fd  # type: ignore[union-attr]
            assert fd is not None
            for sid in ids[1:]:
                assert cache.read_proven(sid, 0) is not None
            assert cache._table.get(ids[0]).fd == fd  # type: ignore[union-attr]
        assert all(cache.read_proven(sid, 0) is not None for sid in reversed(ids))
        assert open_files(tmp_path) <= 8


def test_the_table_is_bounded_by_the_blocks_its_segments_hold(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        table = cache._table
        records = []
        for seed in range(6):
            record, blocks = make_segment(seed)  # V1, four blocks
            if seed == 0:
                table._blocks_limit = 3 * record.block_count  # three such segments
            cache.add_segment(record, [h for _, _, h in blocks])
            cache.put_blocks(record.segment_id, blocks[:1])
            records.append(record)
        loaded = [r for r in records if table.loaded(r.segment_id) is not None]
        assert len(loaded) == 3
        assert table._blocks == sum(r.block_count for r in loaded)
        for record in records:  # out of the table, not out of the cache
            assert cache.has_block(record.segment_id, 0)
        assert table._blocks == 3 * records[0].block_count
