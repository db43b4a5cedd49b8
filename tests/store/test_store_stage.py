"""Staging a run of segments in one call: ``BlockCache.stage`` (docs/benchmarks.md, "The
cache's lock").

A V2 run of eight segments was eight ``add_segment`` commits and eight ``put_blocks`` calls,
each taking the cache's lock again; every other thread of the daemon waited on that lock.
``stage`` indexes the new records in one transaction under one hold of the lock, and must
leave the cache exactly as the calls one by one did.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdistd.errors import VerificationError
from peerdistd.store.blockcache import BlockCache, SegmentRecord
from peerdistd.store.cache_types import ALG_V2_TRUNCATED_SHA512, block_digest
from peerdistd.store.index import CacheIndex
from tests.store.test_store_evict import v2_segment

Item = tuple[SegmentRecord, None, list[tuple[int, bytes, bytes]]]


def item(seed: int) -> Item:
    record, data = v2_segment(seed)
    return record, None, [(0, data, record.hod)]


@contextmanager
def counted_transactions(cache: BlockCache) -> Iterator[list[int]]:
    """Counts the index transactions the cache opens meanwhile."""
    index: CacheIndex = cache._index
    real = index.transaction
    count = [0]

    def counting(**kwargs: Any) -> Any:
        count[0] += 1
        return real(**kwargs)

    index.transaction = counting  # type: ignore[method-assign]
    try:
        yield count
    finally:
        del index.transaction


def test_a_run_of_new_segments_is_indexed_in_one_transaction(tmp_path: Path) -> None:
    items = [item(seed) for seed in range(8)]
    completed: list[bytes] = []
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.on_segment_complete = completed.append
        with counted_transactions(cache) as count:
            cache.stage(items)
        assert count[0] == 1  # eight before: one per new segment
        assert completed == [record.segment_id for record, _, _ in items]
        for record, _, blocks in items:
            assert cache.read_block(record.segment_id, 0, expected=record.hod) == blocks[0][1]
        assert cache.commit_staged() == sum(len(b[0][1]) for _, _, b in items)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:  # durable
        for record, _, blocks in items:
            assert cache.read_block(record.segment_id, 0, expected=record.hod) == blocks[0][1]


def test_one_forged_record_stages_none_of_the_run(tmp_path: Path) -> None:
    items = [item(seed) for seed in range(4)]
    record, hashes, blocks = items[2]
    forged = dataclasses.replace(record, secret=bytes(len(record.secret)))  # id no longer HMAC
    items[2] = (forged, hashes, blocks)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        with pytest.raises(VerificationError):
            cache.stage(items)
        assert all(cache.segment(r.segment_id) is None for r, _, _ in items)
        assert cache.staged_bytes == 0


def test_a_repeated_segment_in_one_run_is_held_once(tmp_path: Path) -> None:
    one = item(1)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.stage([one, item(2), one])
        cache.commit_staged()
        assert cache.usage().segments == 2
        assert cache.usage().bytes_used == 2 * len(one[2][0][1])


def test_a_conflicting_record_no_data_vouches_for_is_replaced_within_the_run(
    tmp_path: Path,
) -> None:
    record, hashes, blocks = item(1)
    # Same id, another (impossible to verify) length: added first without data, then the
    # real record with its block in the same run replaces it, as two add_segment calls did.
    other = dataclasses.replace(record, length=record.length + 1, block_size=record.length + 1)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.add_segment(other)
        cache.stage([(record, hashes, blocks)])
        assert cache.segment(record.segment_id) == record
        assert cache.read_block(record.segment_id, 0, expected=record.hod) == blocks[0][1]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.booleans()), min_size=1, max_size=12))
def test_staging_a_run_leaves_the_cache_as_the_calls_one_by_one(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[int, bool]]
) -> None:
    """``plan``: (segment seed, whether it was added before the run) for each run member."""
    held: dict[str, tuple[int, int, list[bytes]]] = {}
    for way in ("one by one", "stage"):
        root = tmp_path_factory.mktemp("stage")
        with BlockCache.open(root, limit_bytes=1 << 30, sync=False) as cache:
            for seed, before in plan:
                if before:
                    cache.add_segment(item(seed)[0])
            run = [item(seed) for seed, _ in plan]
            if way == "stage":
                cache.stage(run)
            else:
                for record, hashes, blocks in run:
                    cache.add_segment(record, hashes)
                    cache.put_blocks(record.segment_id, blocks, durable=False)
            cache.commit_staged()
            usage = cache.usage()
            held[way] = (
                usage.segments,
                usage.bytes_used,
                sorted(r.segment_id for r, _, _ in run if cache.has_block(r.segment_id, 0)),
            )
    assert held["stage"] == held["one by one"]


def test_a_segment_that_fails_in_a_run_leaves_the_earlier_ones_staged_and_announced(
    tmp_path: Path,
) -> None:
    good = item(1)
    record, hashes, _ = item(2)
    other = item(3)[2][0][1]  # another segment's bytes: not what this record's HoD names
    bad = (record, hashes, [(0, other, block_digest(ALG_V2_TRUNCATED_SHA512, other))])
    completed: list[bytes] = []
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        cache.on_segment_complete = completed.append
        with pytest.raises(VerificationError):
            cache.stage([good, bad])
        assert completed == [good[0].segment_id]
        assert cache.has_block(good[0].segment_id, 0)
        assert not cache.has_block(record.segment_id, 0)


def test_two_writers_staging_overlapping_runs_at_once_store_each_segment_once(
    tmp_path: Path,
) -> None:
    # Two fetches (or a fetch and an add-data) staging the same segments together: one index
    # row per segment, every block readable under its hash, one commit makes all durable.
    items = [item(seed) for seed in range(12)]
    errors: list[BaseException] = []
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        start = threading.Barrier(3)

        def writer(run: list[Item]) -> None:
            try:
                start.wait(30)
                for _ in range(20):
                    cache.stage(run)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=writer, args=(items[:8],)),
            threading.Thread(target=writer, args=(list(reversed(items[4:])),)),
        ]
        for t in threads:
            t.start()
        start.wait(30)
        cache.commit_staged()  # a commit in the middle of the writes
        for t in threads:
            t.join(60)
        assert errors == []
        cache.commit_staged()
        assert cache.usage().segments == len(items)
        assert cache.usage().bytes_used == sum(len(b[0][1]) for _, _, b in items)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as cache:
        for record, _, blocks in items:
            assert cache.read_block(record.segment_id, 0, expected=record.hod) == blocks[0][1]
