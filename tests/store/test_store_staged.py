"""Staged writes and group commit: readable at once, durable only once committed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from peerdistd.store.blockcache import BlockCache
from tests.store.test_store_cache import make_segment


def test_staged_blocks_are_readable_counted_and_committed(tmp_path: Path) -> None:
    record, blocks = make_segment(7)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:2], durable=False)
        assert c.staged_bytes == sum(len(d) for _, d, _ in blocks[:2])
        assert c.read_block(record.segment_id, 1) == blocks[1][1]
        assert c.held_blocks(record.segment_id) == [0, 1]
        assert c.block_counts([record.segment_id]) == {record.segment_id: 2}
        staged = c.staged_bytes
        assert (c.usage().bytes_used, c.usage().blocks) == (staged, 2)  # counted while staged
        assert c.commit_staged() == staged
        assert (c.staged_bytes, c.usage().bytes_used, c.usage().blocks) == (0, staged, 2)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.read_block(record.segment_id, 0) == blocks[0][1]


def test_close_commits_what_is_staged(tmp_path: Path) -> None:
    record, blocks = make_segment(8)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks, durable=False)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.held_blocks(record.segment_id) == [i for i, _, _ in blocks]
        assert c.verify().bad_blocks == 0


def test_kill_before_commit_loses_only_the_staged_blocks(tmp_path: Path) -> None:
    record, blocks = make_segment(9)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:1])  # durable
    child = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path.cwd())!r})
        from peerdistd.store.blockcache import BlockCache
        from tests.store.test_store_cache import make_segment
        record, blocks = make_segment(9)
        c = BlockCache.open(__import__("pathlib").Path({str(tmp_path)!r}), limit_bytes=1 << 30)
        c.put_blocks(record.segment_id, blocks[1:], durable=False)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], check=False)
    assert proc.returncode == -signal.SIGKILL
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.held_blocks(record.segment_id) == [0]
        assert c.read_block(record.segment_id, 1) is None
        report = c.verify()
        assert (report.bad_blocks, report.blocks) == (0, 1)


def test_flush_drops_staged_blocks(tmp_path: Path) -> None:
    record, blocks = make_segment(10)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:1])
        c.put_blocks(record.segment_id, blocks[1:], durable=False)
        c.flush()
        assert c.staged_bytes == 0
        assert c.read_block(record.segment_id, 1) is None
        assert c.commit_staged() == 0


def test_blocks_being_committed_are_still_counted(tmp_path: Path) -> None:
    """While the group commit syncs without the lock, its blocks are neither staged nor
    indexed; discovery must still count them (a holder answered "no match" in that window,
    so a third node fetched everything from the first one)."""
    record, blocks = make_segment(10)
    seen: list[tuple[dict[bytes, int], list[int]]] = []
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:2], durable=False)
        real_sync = c._files.sync

        def sync_and_look(fd: int) -> None:
            seen.append((c.block_counts([record.segment_id]), c.held_blocks(record.segment_id)))
            real_sync(fd)

        c._files.sync = sync_and_look  # type: ignore[method-assign]
        c.commit_staged()
    assert seen == [({record.segment_id: 2}, [0, 1])]


def test_block_hashes_of_indexed_and_staged_blocks(tmp_path: Path) -> None:
    """What a hosted cache offer names for blocks stored before (offered after a restart)."""
    record, blocks = make_segment(10)
    assert len(blocks) >= 3
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.block_hashes(record.segment_id) == {}  # not held at all
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:1])  # indexed
        c.put_blocks(record.segment_id, blocks[1:2], durable=False)  # staged
        assert c.block_hashes(record.segment_id) == {i: h for i, _, h in blocks[:2]}
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.block_hashes(record.segment_id) == {i: h for i, _, h in blocks[:2]}


def test_the_write_that_completes_a_segment_is_announced_once(tmp_path: Path) -> None:
    """on_segment_complete: how a hosted cache client learns a segment can be offered,
    whichever write (staged or durable, this run of the daemon or an earlier) completes it."""
    record, blocks = make_segment(12)
    assert len(blocks) >= 3
    completed: list[bytes] = []
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.on_segment_complete = completed.append
        c.add_segment(record)
        c.put_blocks(record.segment_id, blocks[:1])  # durable, not complete
        assert completed == []
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:  # another run of the daemon
        c.on_segment_complete = completed.append
        c.put_blocks(record.segment_id, blocks[1:-1], durable=False)
        assert completed == []
        c.put_blocks(record.segment_id, blocks[-1:], durable=False)  # the completing write
        assert completed == [record.segment_id]
        c.put_blocks(record.segment_id, blocks)  # all held already: nothing new
        assert completed == [record.segment_id]
        assert c.block_hashes(record.segment_id) == {i: h for i, _, h in blocks}
