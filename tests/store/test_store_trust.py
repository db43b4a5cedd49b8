"""What the block cache trusts (docs/trust.md): the reader's hash on every read, proven hash
lists, replacement of unproven blocks and records, and the schema 1 migration."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from peerdistd.errors import VerificationError
from peerdistd.store import cache_files
from peerdistd.store.blockcache import BlockCache, SegmentRecord
from tests.store.test_store_cache import make_segment

LIMIT = 1 << 30


def hashes_of(blocks: list[tuple[int, bytes, bytes]]) -> list[bytes]:
    return [h for _, _, h in blocks]


def test_a_read_names_its_hash_and_an_unproven_block_is_replaced(tmp_path: Path) -> None:
    record, blocks = make_segment(21)
    sid = record.segment_id
    evil = b"\xee" * 65536
    evil_hash = hashlib.sha256(evil).digest()
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record)  # a range list: nothing proven
        c.put_block(sid, 1, evil, evil_hash)
        assert c.read_block(sid, 1, expected=blocks[1][2]) is None
        assert c.read_block(sid, 1, expected=evil_hash) == evil
        assert c.proven_blocks(sid) == [] and c.read_proven(sid, 1) is None
        assert c.block_counts([sid]) == {sid: 1} and c.block_counts([sid], proven_only=True) == {}
        assert c.has_block(sid, 1) and not c.has_block(sid, 1, expected=blocks[1][2])
        c.put_block(sid, 1, blocks[1][1], blocks[1][2])  # the genuine block wins
        assert c.read_block(sid, 1, expected=blocks[1][2]) == blocks[1][1]
        assert c.read_block(sid, 1, expected=evil_hash) is None
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:  # and so it stays
        assert c.read_block(sid, 1, expected=blocks[1][2]) == blocks[1][1]
        assert c.usage().blocks == 1


def test_a_full_list_proves_blocks_and_drops_contradicting_ones(tmp_path: Path) -> None:
    record, blocks = make_segment(22)
    sid = record.segment_id
    evil = b"\xee" * 65536
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record)
        c.put_blocks(sid, [blocks[0], (1, evil, hashlib.sha256(evil).digest())])
        with pytest.raises(VerificationError):  # a list that does not hash to HoD
            c.add_segment(record, [hashlib.sha256(evil).digest(), *hashes_of(blocks)[1:]])
        c.add_segment(record, hashes_of(blocks))
        assert c.held_blocks(sid) == [0] and c.proven_blocks(sid) == [0]
        assert c.block_counts([sid], proven_only=True) == {sid: 1}
        with pytest.raises(VerificationError):
            c.put_block(sid, 1, evil, hashlib.sha256(evil).digest())
        c.put_blocks(sid, blocks[1:])
        assert c.read_proven(sid, 3) == blocks[3][1]
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        assert c.proven_blocks(sid) == [0, 1, 2, 3]
        assert c.block_counts([sid], proven_only=True) == {sid: 4}


def test_a_conflicting_record_replaces_one_no_data_vouches_for(tmp_path: Path) -> None:
    record, blocks = make_segment(23)
    sid = record.segment_id
    forged = SegmentRecord(sid, 1, record.algorithm, record.hod, record.secret, 65536, 65536)
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(forged)  # a local user's content information claims another length
        c.put_block(sid, 0, blocks[0][1], blocks[0][2])
        c.add_segment(record, hashes_of(blocks))  # the genuine one is not locked out
        assert c.segment(sid) == record and c.held_blocks(sid) == []
        c.put_blocks(sid, blocks)
        with pytest.raises(VerificationError):  # now its proven last block pins the length
            c.add_segment(forged)
        assert c.held_blocks(sid) == [0, 1, 2, 3]


def test_flipped_bytes_are_dropped_and_counted(tmp_path: Path) -> None:
    record, blocks = make_segment(24)
    sid = record.segment_id
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record, hashes_of(blocks))
        c.put_blocks(sid, blocks)
        (path,) = tmp_path.rglob("*.seg")
        with path.open("r+b") as f:
            f.seek(65536 + 5)
            f.write(b"\x00" if blocks[1][1][5] else b"\x01")
        assert c.read_block(sid, 1, 0, 10, expected=blocks[1][2]) is None
        assert c.read_proven(sid, 0) == blocks[0][1]
        assert c.usage().bad_blocks_from_disk == 1
        assert c.held_blocks(sid) == [0, 2, 3]
        assert c.read_block(sid, 1, expected=blocks[1][2]) is None
        assert c.usage().bad_blocks_from_disk == 1


def test_a_schema_1_index_opens_with_its_blocks_unproven(tmp_path: Path) -> None:
    record, blocks = make_segment(25)
    sid = record.segment_id
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record, hashes_of(blocks))
        c.put_blocks(sid, blocks)
    db = sqlite3.connect(tmp_path / "index.sqlite")
    db.executescript(
        "ALTER TABLE segments DROP COLUMN proven; PRAGMA user_version=1;"
    )  # what schema 1 wrote
    db.close()
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        assert c.held_blocks(sid) == [0, 1, 2, 3] and c.proven_blocks(sid) == []
        assert c.read_block(sid, 2, expected=blocks[2][2]) == blocks[2][1]
        c.add_segment(record, hashes_of(blocks))
        assert c.proven_blocks(sid) == [0, 1, 2, 3]


def test_a_run_of_blocks_is_read_at_once_and_stops_at_the_first_that_fails(
    tmp_path: Path,
) -> None:
    record, blocks = make_segment(26)
    sid = record.segment_id
    data = b"".join(d for _, d, _ in blocks)
    hashes = hashes_of(blocks)
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record, hashes)
        c.put_blocks(sid, [blocks[0], blocks[1], blocks[3]])
        assert c.read_run(sid, 0, hashes, 0, len(data)) == data[: 2 * 65536]
        assert c.read_run(sid, 0, hashes, 100, 65536) == data[100:65636]
        assert c.read_run(sid, 1, hashes[1:], 5, 10) == data[65541:65551]
        assert c.read_run(sid, 3, hashes[3:], 0, 1000) == data[3 * 65536 :]
        assert c.read_run(sid, 2, hashes[2:], 0, 1000) == b""
        other = [hashes[1], hashes[0]]  # another reader's list: block 0 is not its block
        assert c.read_run(sid, 0, other, 0, 65536) == b""
        (path,) = tmp_path.rglob("*.seg")
        with path.open("r+b") as f:
            f.seek(65536 + 9)
            f.write(b"\x00" if data[65536 + 9] else b"\x01")
        assert c.read_run(sid, 0, hashes, 0, len(data)) == data[:65536]
        assert c.usage().bad_blocks_from_disk == 1 and c.held_blocks(sid) == [0, 3]


def test_a_run_for_peers_is_proven_blocks_checked_on_this_read(tmp_path: Path) -> None:
    record, blocks = make_segment(27, length=6 * 65536 + 100)  # blocks 0..6, 6 is short
    sid = record.segment_id
    hashes = hashes_of(blocks)
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record)  # a range list: nothing proven, nothing for peers
        c.put_blocks(sid, [blocks[0], blocks[1]])
        assert c.read_proven_run(sid, 0, 4) == ([], 0)
        c.add_segment(record, hashes)
        c.put_blocks(sid, [blocks[2], blocks[4], blocks[6]])
        run, after = c.read_proven_run(sid, 0, 16)
        assert [bytes(b) for b in run] == [blocks[i][1] for i in range(3)] and after == 4
        run, after = c.read_proven_run(sid, 4, 16)
        assert [bytes(b) for b in run] == [blocks[4][1]] and after == 6
        run, after = c.read_proven_run(sid, 6, 16)  # the short last block, nothing after it
        assert [bytes(b) for b in run] == [blocks[6][1]] and after == 0
        assert c.read_proven_run(sid, 0, 2)[1] == 2  # cut by count: the next held one
        (path,) = tmp_path.rglob("*.seg")
        with path.open("r+b") as f:  # block 1's bytes change on disk
            f.seek(65536 + 9)
            f.write(b"\x00" if blocks[1][1][9] else b"\x01")
        run, after = c.read_proven_run(sid, 0, 16)
        assert [bytes(b) for b in run] == [blocks[0][1]] and after == 2  # 1 was dropped
        assert c.usage().bad_blocks_from_disk == 1 and c.held_blocks(sid) == [0, 2, 4, 6]


def test_blocks_put_together_land_at_their_own_offsets(tmp_path: Path) -> None:
    record, blocks = make_segment(28, length=9 * 65536 + 777)  # blocks 0..9, 9 is short
    sid = record.segment_id
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record, hashes_of(blocks))
        # Out of order, with gaps and the short last block: runs of consecutive blocks are
        # written with one pwritev each, the rest one by one.
        c.put_blocks(sid, [blocks[i] for i in (5, 0, 1, 2, 8, 9, 3)], durable=False)
        assert c.held_blocks(sid) == [0, 1, 2, 3, 5, 8, 9]
        for i in (0, 1, 2, 3, 5, 8, 9):
            assert c.read_block(sid, i, expected=blocks[i][2]) == blocks[i][1]
        c.commit_staged()
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        data = c.read_run(sid, 0, hashes_of(blocks)[:4], 0, 4 * 65536)
        assert data == b"".join(blocks[i][1] for i in range(4))


def test_a_long_run_of_blocks_is_written_in_pieces_each_at_its_offset(tmp_path: Path) -> None:
    # A publish puts a whole segment at once; it is written in calls of WRITE_RUN_BLOCKS
    # (one call for all of it halved publish throughput), every block where it belongs.
    count = 2 * cache_files.WRITE_RUN_BLOCKS + 3
    record, blocks = make_segment(29, length=count * 65536 - 100)
    sid = record.segment_id
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        c.add_segment(record, hashes_of(blocks))
        c.put_blocks(sid, list(blocks), durable=True)
    with BlockCache.open(tmp_path, limit_bytes=LIMIT) as c:
        assert c.held_blocks(sid) == list(range(count))
        whole = c.read_run(sid, 0, hashes_of(blocks), 0, count * 65536)
        assert whole == b"".join(b[1] for b in blocks)
