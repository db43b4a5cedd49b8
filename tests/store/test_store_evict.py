"""Size limit, LRU eviction by segment, pins and flush (DESIGN.md Stores)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from peerdistd.errors import ConfigError, ServiceUnavailable
from peerdistd.store.blockcache import BlockCache, SegmentRecord
from peerdistd.store.cache_types import ALG_V2_TRUNCATED_SHA512, block_digest, derive_segment_id

SIZE = 10_000  # each test segment is one V2 block of this many bytes


def v2_segment(seed: int, size: int = SIZE) -> tuple[SegmentRecord, bytes]:
    data = random.Random(seed).randbytes(size)
    hod = block_digest(ALG_V2_TRUNCATED_SHA512, data)
    secret = block_digest(ALG_V2_TRUNCATED_SHA512, b"k%d" % seed)
    sid = derive_segment_id(ALG_V2_TRUNCATED_SHA512, hod, secret)
    return SegmentRecord(sid, 2, ALG_V2_TRUNCATED_SHA512, hod, secret, size, size), data


def store(cache: BlockCache, seed: int) -> bytes:
    record, data = v2_segment(seed)
    cache.add_segment(record)
    cache.put_block(record.segment_id, 0, data, record.hod)
    return record.segment_id


def test_lru_evicts_least_recently_used_segment(tmp_path: Path) -> None:
    evicted: list[bytes] = []
    with BlockCache.open(tmp_path, limit_bytes=3 * SIZE, sync=False) as c:
        c.on_evict = evicted.append
        a, b, d = store(c, 1), store(c, 2), store(c, 3)
        c.touch(a)  # b is now the least recently used
        e = store(c, 4)
        assert evicted == [b]
        assert c.segment(b) is None and not c.has_block(b, 0)
        assert c.read_block(a, 0) is not None
        assert c.read_block(a, 0) == v2_segment(1)[1]
        # Reads count as use too: a was read after e was stored, so d is now the oldest.
        store(c, 5)
        assert evicted == [b, d]
        assert c.block_counts([a, b, d, e]) == {a: 1, e: 1}
        usage = c.usage()
        assert (usage.bytes_used, usage.segments, usage.blocks, usage.evictions) == (
            3 * SIZE,
            3,
            3,
            2,
        )
        assert len(list((tmp_path / "data").rglob("*.seg"))) == 3


def test_recency_survives_reopen(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=3 * SIZE, sync=False) as c:
        a, b, _ = store(c, 1), store(c, 2), store(c, 3)
        c.touch(a)
    with BlockCache.open(tmp_path, limit_bytes=3 * SIZE, sync=False) as c:
        store(c, 4)
        assert c.segment(b) is None
        assert c.segment(a) is not None


def test_pinned_segment_is_never_evicted(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=2 * SIZE, sync=False) as c:
        a, b = store(c, 1), store(c, 2)
        with c.pin(a), c.pin(a):
            store(c, 3)
            assert c.segment(a) is not None and c.segment(b) is None
        # released twice over: a is evictable again and the oldest
        store(c, 4)
        assert c.segment(a) is None


def test_full_of_pinned_segments_refuses_new_data(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=2 * SIZE, sync=False) as c:
        a, b = store(c, 1), store(c, 2)
        record, data = v2_segment(3)
        c.add_segment(record)
        with c.pin(a), c.pin(b), pytest.raises(ServiceUnavailable):
            c.put_block(record.segment_id, 0, data, record.hod)
        assert not c.has_block(record.segment_id, 0)
        assert c.usage().evictions == 0 and c.usage().bytes_used == 2 * SIZE


def test_flush_drops_all_but_pinned(tmp_path: Path) -> None:
    evicted: list[bytes] = []
    with BlockCache.open(tmp_path, limit_bytes=10 * SIZE, sync=False) as c:
        c.on_evict = evicted.append
        a, b, d = store(c, 1), store(c, 2), store(c, 3)
        with c.pin(b):
            assert c.flush() == 2 * SIZE
        assert sorted(evicted) == sorted([a, d])
        usage = c.usage()
        assert (usage.bytes_used, usage.segments, usage.evictions) == (SIZE, 1, 0)
        assert c.read_block(b, 0) == v2_segment(2)[1]


def test_smaller_limit_evicts_at_open(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=4 * SIZE, sync=False) as c:
        ids = [store(c, seed) for seed in range(4)]
    with BlockCache.open(tmp_path, limit_bytes=2 * SIZE, sync=False) as c:
        assert [c.segment(s) is not None for s in ids] == [False, False, True, True]
        assert c.usage().evictions == 2


def test_limit_by_percent_of_the_filesystem(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    with BlockCache.open(tmp_path, limit_percent=2.5) as c:
        assert c.usage().limit_bytes == int(st.f_blocks * st.f_frsize * 2.5 / 100)
    with BlockCache.open(tmp_path) as c:  # BranchCache's default: 5 %
        assert c.usage().limit_bytes == int(st.f_blocks * st.f_frsize * 5 / 100)
    for bad in (0.0, -1.0, 100.5):
        with pytest.raises(ConfigError) as info:
            BlockCache.open(tmp_path, limit_percent=bad)
        assert info.value.key == "cache.limit_percent"
    with pytest.raises(ConfigError):
        BlockCache.open(tmp_path, limit_bytes=0)


def test_failing_on_evict_callback_does_not_break_the_cache(tmp_path: Path) -> None:
    def boom(segment_id: bytes) -> None:
        raise RuntimeError("callback bug")

    with BlockCache.open(tmp_path, limit_bytes=SIZE, sync=False) as c:
        c.on_evict = boom
        store(c, 1)
        b = store(c, 2)
        assert c.usage().evictions == 1 and c.has_block(b, 0)


def test_empty_segments_are_not_evicted_for_space(tmp_path: Path) -> None:
    with BlockCache.open(tmp_path, limit_bytes=2 * SIZE, sync=False) as c:
        empty, _ = v2_segment(10)
        c.add_segment(empty)  # recorded first, so the least recently used
        a = store(c, 1)
        store(c, 2)
        store(c, 3)
        assert c.segment(empty.segment_id) == empty
        assert c.segment(a) is None
        assert c.usage().evictions == 1
