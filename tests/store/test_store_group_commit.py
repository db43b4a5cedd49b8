"""Group commit: commits run one at a time and in order, each indexes only what it synced.

Issue 8, finding 3: a commit that began while another was syncing took the other's batch
away (never indexed: lost at restart) and a second caller returned before its blocks were
durable. Threads here stop a commit inside its fdatasync on purpose, so the interleaving is
forced, not hoped for.
"""

from __future__ import annotations

import ctypes
import errno
import threading
from pathlib import Path

import pytest

from peerdistd.errors import LocalError
from peerdistd.store import cache_files
from peerdistd.store.blockcache import BlockCache
from tests.store.test_store_cache import make_segment

WAIT = 30.0


class _Gate:
    """Replaces SegmentFiles.sync: the first call waits for ``release``."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(WAIT)
        self.real(fd)  # type: ignore[operator]


class _Watched(threading.Condition):
    """The cache's commit condition, telling the test when a commit waits on it."""

    def __init__(self, lock: object, waiting: threading.Event) -> None:
        super().__init__(lock)  # type: ignore[arg-type]
        self.waiting = waiting

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_a_commit_started_during_another_waits_and_loses_nothing(tmp_path: Path) -> None:
    record, blocks = make_segment(21)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        gate = _Gate(c._files.sync)
        c._files.sync = gate  # type: ignore[method-assign]
        progressed = threading.Event()  # the second commit waits, or (old code) returned
        c._commit_done = _Watched(c._lock, progressed)
        c.put_blocks(record.segment_id, blocks[:1], durable=False)
        first = threading.Thread(target=c.commit_staged)
        first.start()
        assert gate.entered.wait(WAIT)  # the first commit is inside its fdatasync
        c.put_blocks(record.segment_id, blocks[1:2], durable=False)
        ticket = c.staging_ticket()
        results: list[int] = []

        def second_commit() -> None:
            results.append(c.commit_staged())
            progressed.set()

        second = threading.Thread(target=second_commit)
        second.start()
        assert progressed.wait(WAIT)
        gate.release.set()
        first.join(WAIT)
        second.join(WAIT)
        assert results == [len(blocks[1][1])]  # the second committed its own block...
        assert c.committed_batch >= ticket  # ...and says so only once it is durable
        assert c.staged_bytes == 0
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.held_blocks(record.segment_id) == [0, 1]  # the first batch was not lost
        report = c.verify()
        assert (report.blocks, report.bad_blocks) == (2, 0)


def test_tickets_follow_batches(tmp_path: Path) -> None:
    record, blocks = make_segment(22)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        assert c.staging_ticket() <= c.committed_batch  # nothing staged: durable already
        c.put_blocks(record.segment_id, blocks[:1], durable=False)
        ticket = c.staging_ticket()
        assert ticket > c.committed_batch
        c.commit_staged()
        assert c.committed_batch >= ticket
        assert c.staging_ticket() <= c.committed_batch


def test_a_failed_sync_drops_the_batch_and_counts_it(tmp_path: Path) -> None:
    record, blocks = make_segment(23)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        real = c._files.sync

        def broken(fd: int) -> None:
            raise LocalError("cannot sync the block cache: [Errno 5] Input/output error")

        c._files.sync = broken  # type: ignore[method-assign]
        c.put_blocks(record.segment_id, blocks[:1], durable=False)
        ticket = c.staging_ticket()
        with pytest.raises(LocalError):
            c.commit_staged()
        assert c.commit_failures == 1
        assert c.committed_batch >= ticket  # the next batch may commit...
        assert c.read_block(record.segment_id, 0) is None  # ...this one's blocks are gone
        c._files.sync = real  # type: ignore[method-assign]
        c.put_blocks(record.segment_id, blocks[:2], durable=False)
        c.commit_staged()
        assert c.held_blocks(record.segment_id) == [0, 1]


def test_a_durable_put_of_a_staged_block_is_durable_on_return(tmp_path: Path) -> None:
    record, blocks = make_segment(24)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:2], durable=False)
        c.put_blocks(record.segment_id, blocks[:1])  # durable: must not wait for the batch
        seg = c._table.load(record.segment_id)
        assert seg is not None and c._index.block_hash(seg.rowid, 0) == blocks[0][2]
        assert c.staged_bytes == len(blocks[1][1])
        c.commit_staged()  # the rest of the batch still commits, without a duplicate row
        assert c.held_blocks(record.segment_id) == [0, 1]
        assert c.usage().blocks == 2
        assert c.verify().bad_blocks == 0


def test_a_batch_of_many_segment_files_is_made_durable_with_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # V2 contents stage ~16 segment files per MiB: one fdatasync each cost ~1.5 ms here, so
    # a batch past SYNCFS_MIN_FILES files takes one syncfs(2) of the cache's file system.
    if cache_files._syncfs is None:
        pytest.skip("syncfs(2) with error reporting needs Linux >= 5.8")
    syncfs_calls: list[int] = []
    real_syncfs = cache_files._syncfs

    def counting(fd: int) -> int:
        syncfs_calls.append(fd)
        return real_syncfs(fd)

    monkeypatch.setattr(cache_files, "_syncfs", counting)
    segments = [make_segment(100 + i, version=2, length=40_000) for i in range(12)]
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        fdatasyncs: list[int] = []
        real_sync = c._files.sync

        def counting_sync(fd: int) -> None:
            fdatasyncs.append(fd)
            real_sync(fd)

        c._files.sync = counting_sync  # type: ignore[method-assign]
        for record, blocks in segments:
            c.add_segment(record)
            c.put_blocks(record.segment_id, blocks, durable=False)
        c.commit_staged()
        assert len(syncfs_calls) == 1 and fdatasyncs == []
        # A small batch keeps the per-file path (no whole-file-system sync for one block).
        record, blocks = make_segment(99)
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:1], durable=False)
        c.commit_staged()
        assert len(syncfs_calls) == 1 and len(fdatasyncs) == 1
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        for record, _blocks in segments:
            assert c.held_blocks(record.segment_id) == [0]


def test_a_failed_syncfs_drops_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if cache_files._syncfs is None:
        pytest.skip("syncfs(2) with error reporting needs Linux >= 5.8")

    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(cache_files, "_syncfs", failing)
    segments = [make_segment(200 + i, version=2, length=40_000) for i in range(12)]
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        for record, blocks in segments:
            c.add_segment(record)
            c.put_blocks(record.segment_id, blocks, durable=False)
        with pytest.raises(LocalError, match="Input/output error"):
            c.commit_staged()
        assert c.commit_failures == 1
        assert all(c.held_blocks(r.segment_id) == [] for r, _ in segments)
