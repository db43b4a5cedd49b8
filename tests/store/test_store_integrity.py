"""Crash safety and bad files on disk: nothing unverified or damaged is ever served."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from peerdistd.store.blockcache import BlockCache, SegmentRecord
from peerdistd.store.cache_types import ALG_SHA256, block_digest, derive_segment_id
from peerdistd.store.index import CacheIndex

BS = 65536


def v1_segment(seed: int, blocks: int = 3) -> tuple[SegmentRecord, list[tuple[int, bytes, bytes]]]:
    rows = []
    for i in range(blocks):
        data = hashlib.sha256(b"%d/%d" % (seed, i)).digest() * (BS // 32)
        rows.append((i, data, hashlib.sha256(data).digest()))
    hod = hashlib.sha256(b"".join(h for _, _, h in rows)).digest()
    secret = hashlib.sha256(b"kp%d" % seed).digest()
    sid = derive_segment_id(ALG_SHA256, hod, secret)
    return SegmentRecord(sid, 1, ALG_SHA256, hod, secret, blocks * BS, BS), rows


def filled(path: Path, seed: int = 1) -> tuple[SegmentRecord, list[tuple[int, bytes, bytes]]]:
    record, rows = v1_segment(seed)
    with BlockCache.open(path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        c.put_blocks(record.segment_id, rows)
    return record, rows


def segment_file(path: Path) -> Path:
    (found,) = (path / "data").rglob("*.seg")
    return found


def assert_all_verified(c: BlockCache) -> None:
    """Every row reads back in full and hashes to its stored hash."""
    report = c.verify()
    assert report.bad_blocks == 0 and report.orphan_files == 0
    usage = c.usage()
    seen = 0
    for rowid, record in c._index.all_segments():
        for index, length, digest in c._index.blocks(rowid):
            data = c.read_block(record.segment_id, index)
            assert data is not None and len(data) == length
            assert block_digest(record.algorithm, data) == digest
            seen += 1
    assert seen == usage.blocks == report.blocks


def test_truncated_file_is_never_served(tmp_path: Path) -> None:
    record, rows = filled(tmp_path)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        sid = record.segment_id
        assert c.read_block(sid, 2) == rows[2][1]  # descriptor now open
        os.truncate(segment_file(tmp_path), BS + 10)
        assert c.read_block(sid, 1) is None
        assert c.held_blocks(sid) == [0]
        assert c.read_block(sid, 0) == rows[0][1]
        assert c.usage().bytes_used == BS
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.held_blocks(sid) == [0]
        assert_all_verified(c)


def test_verify_drops_corrupted_and_truncated_blocks(tmp_path: Path) -> None:
    record, rows = filled(tmp_path)
    path = segment_file(tmp_path)
    with path.open("r+b") as f:
        f.seek(BS + 100)
        f.write(b"\xff")
        f.truncate(2 * BS + 1)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        report = c.verify()
        assert (report.segments, report.blocks, report.bad_blocks) == (1, 3, 2)
        assert report.bytes_dropped == 2 * BS
        assert c.held_blocks(record.segment_id) == [0]
        assert c.read_block(record.segment_id, 1) is None
        assert c.usage().bytes_used == BS
        c.put_block(record.segment_id, 1, rows[1][1], rows[1][2])  # refetched: served again
        assert c.read_block(record.segment_id, 1) == rows[1][1]
        assert_all_verified(c)


def test_symlinked_data_file_is_not_followed(tmp_path: Path) -> None:
    record, _ = filled(tmp_path)
    path = segment_file(tmp_path)
    target = tmp_path / "elsewhere"
    path.rename(target)
    path.symlink_to(target)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.read_block(record.segment_id, 0) is None
        assert c.held_blocks(record.segment_id) == []
        c.verify()
        assert not path.is_symlink()
        assert target.exists()


def test_verify_removes_files_no_row_names(tmp_path: Path) -> None:
    filled(tmp_path)
    (tmp_path / "data" / "05").mkdir()
    (tmp_path / "data" / "05" / "905.seg").write_bytes(b"stale")
    (tmp_path / "data" / "01" / "junk").write_bytes(b"x")
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        report = c.verify()
        assert report.orphan_files == 2 and report.bad_blocks == 0
    assert sorted(p.name for p in (tmp_path / "data").rglob("*") if p.is_file()) == ["1.seg"]


@pytest.mark.parametrize("damage", ["garbage", "schema"])
def test_corrupt_index_is_set_aside_and_rebuilt(tmp_path: Path, damage: str) -> None:
    record, rows = filled(tmp_path)
    index = tmp_path / "index.sqlite"
    if damage == "garbage":
        index.write_bytes(b"this is not an SQLite database" * 100)
    else:
        with sqlite3.connect(index) as db:
            db.execute("PRAGMA user_version = 99")
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        if damage == "garbage":
            assert c.segment(record.segment_id) is None
            assert c.read_block(record.segment_id, 0) is None
            assert c.usage().bytes_used == 0
            assert not list((tmp_path / "data").rglob("*.seg"))  # nothing vouches for them
        else:  # another schema: its rows are still read, and kept where the bytes prove them
            assert c.held_blocks(record.segment_id) == [i for i, _, _ in rows]
        assert [n.store for n in c.notes()] == ["cache"]
        assert Path(c.notes()[0].set_aside).exists()  # kept for the administrator
        c.add_segment(record)
        c.put_blocks(record.segment_id, rows)
        assert_all_verified(c)


def test_crash_between_data_and_row_leaves_nothing_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record, rows = v1_segment(2)
    c = BlockCache.open(tmp_path, limit_bytes=1 << 30)
    c.add_segment(record)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # the process dies after pwrite, before COMMIT

    monkeypatch.setattr(CacheIndex, "insert_blocks", crash)
    with pytest.raises(KeyboardInterrupt):
        c.put_blocks(record.segment_id, rows)
    monkeypatch.undo()
    c.close()
    assert segment_file(tmp_path).stat().st_size == 3 * BS  # the data did land
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        assert c.held_blocks(record.segment_id) == []
        assert c.read_block(record.segment_id, 0) is None
        assert c.usage().bytes_used == 0
        assert_all_verified(c)


CHILD = textwrap.dedent(
    """
    import hashlib, os, signal, sys
    from pathlib import Path
    from peerdistd.store.blockcache import BlockCache, SegmentRecord
    from peerdistd.store.cache_files import SegmentFiles
    from peerdistd.store.cache_types import derive_segment_id
    from peerdistd.store.index import CacheIndex
    BS = 65536
    directory, round_, hook = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    nth = int(sys.argv[4])
    calls = 0

    def die_at(cls, name, half_write=False):
        original = getattr(cls, name)
        def hooked(*args):
            global calls
            calls += 1
            if calls == nth:
                if half_write:  # a torn block: half of it reaches the file
                    fd, offset, data = args[1:]
                    os.pwrite(fd, bytes(data)[: len(data) // 2], offset)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args)
        setattr(cls, name, hooked)

    if hook == "before_commit":
        die_at(CacheIndex, "insert_blocks")
    elif hook == "mid_write":
        die_at(SegmentFiles, "write", half_write=True)
    elif hook == "before_unlink":
        die_at(SegmentFiles, "remove")
    cache = BlockCache.open(directory, limit_bytes=6 * 8 * BS)
    n = 0
    while True:
        n += 1
        blocks = []
        for i in range(8):
            data = os.urandom(BS)
            blocks.append((i, data, hashlib.sha256(data).digest()))
        hod = hashlib.sha256(b"".join(h for _, _, h in blocks)).digest()
        kp = hashlib.sha256(b"%d/%d" % (round_, n)).digest()
        sid = derive_segment_id(0x800C, hod, kp)
        cache.add_segment(SegmentRecord(sid, 1, 0x800C, hod, kp, 8 * BS, BS))
        cache.put_blocks(sid, blocks[:3])
        for i, data, digest in blocks[3:]:
            cache.put_block(sid, i, data, digest)
        print(n, flush=True)
    """
)


def newest_is_unvouched(c: BlockCache) -> bool:
    """Whether the newest segment's file holds bytes past its indexed blocks (a lost row)."""
    rowid, _ = c._index.all_segments()[-1]
    extent = max((i * BS + n for i, n, _ in c._index.blocks(rowid)), default=0)
    return c._files.path(rowid).stat().st_size > extent


# (hook, nth call): a real SIGKILL at the moment the hook names, whatever else was under way.
CRASHES = [
    ("before_commit", 1),  # data written and fdatasync'ed, row not committed
    ("before_commit", 5),
    ("mid_write", 2),  # a torn block in the file
    ("mid_write", 9),
    ("before_unlink", 1),  # an eviction committed, its file not yet removed
    ("before_unlink", 3),
]


def test_kill_9_while_writing_never_leaves_unverified_blocks(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    rng = random.Random(7)
    plan = [(hook, nth) for hook, nth in CRASHES] + [("random", n) for n in (1, 3, 8, 12)]
    for round_, (hook, nth) in enumerate(plan):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(round_), hook, str(nth)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert child.stdout is not None
        if hook == "random":
            for _ in range(nth):
                assert child.stdout.readline()
            # Not synchronisation: a varying delay so the kill lands in different phases.
            time.sleep(rng.uniform(0, 0.004))
            child.send_signal(signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
        child.stdout.close()
        with BlockCache.open(tmp_path, limit_bytes=6 * 8 * BS) as c:
            if hook in ("before_commit", "mid_write"):
                assert newest_is_unvouched(c)  # the crash did hit the window
            before = c.usage()
            assert_all_verified(c)  # and no orphan file: the trash was emptied at open
            after = c.usage()
            assert (before.bytes_used, before.blocks) == (after.bytes_used, after.blocks)
            assert after.bytes_used <= after.limit_bytes


def test_two_threads_write_and_read_concurrently(tmp_path: Path) -> None:
    segments = [v1_segment(seed, blocks=4) for seed in range(12)]
    errors: list[BaseException] = []
    start = threading.Barrier(2)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:

        def writer() -> None:
            try:
                start.wait()
                for record, rows in segments:
                    c.add_segment(record)
                    for row in rows:
                        c.put_block(record.segment_id, *row)
            except BaseException as exc:
                errors.append(exc)

        def reader() -> None:
            try:
                start.wait()
                for _ in range(30):
                    for record, rows in segments:
                        for index, data, _ in rows:
                            got = c.read_block(record.segment_id, index)
                            assert got is None or got == data
                        c.block_counts([record.segment_id])
                        c.touch(record.segment_id)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert c.usage().blocks == 48
        assert_all_verified(c)


@pytest.mark.parametrize("pages", ["lru-index", "last-two"])
def test_damaged_index_pages_are_set_aside_and_what_they_prove_kept(
    tmp_path: Path, pages: str
) -> None:
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=False) as c:
        for seed in range(40):
            record, rows = v1_segment(seed, blocks=2)
            c.add_segment(record)
            c.put_blocks(record.segment_id, rows)
        c._index._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        lru_page = c._index._db.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'segments_lru'"
        ).fetchone()[0]
    index = tmp_path / "index.sqlite"
    size = index.stat().st_size
    with index.open("r+b") as f:
        if pages == "lru-index":  # an index page: every row is still there to salvage
            f.seek((lru_page - 1) * 4096)
            f.write(bytes(4096))
        else:  # the last pages: rows (here the segment records), not the schema page
            f.seek(size - 2 * 4096)
            f.write(bytes(range(256)) * 32)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        (note,) = c.notes()
        assert note.store == "cache" and "quick_check" in note.reason
        assert Path(note.set_aside).exists()
        assert c.usage().blocks == note.kept
        if pages == "lru-index":
            assert note.kept == 80
        assert_all_verified(c)
        report = c.verify()
        assert (report.bad_blocks, report.orphan_files) == (0, 0)
        assert c.notes() == [note]  # healed once, at open
