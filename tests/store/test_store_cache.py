"""Block cache round trips, record checks and hostile input (DESIGN.md Stores, PROTOCOLS 1.1)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdistd.errors import DecodeError, InvalidParameter, LocalError, VerificationError
from peerdistd.store.blockcache import BlockCache, SegmentRecord
from peerdistd.store.cache_types import (
    ALG_SHA256,
    ALG_SHA384,
    ALG_V2_TRUNCATED_SHA512,
    block_digest,
    derive_segment_id,
)

Blocks = list[tuple[int, bytes, bytes]]


def make_segment(seed: int, length: int = 3 * 65536 + 100, version: int = 1,
                 algorithm: int = ALG_SHA256) -> tuple[SegmentRecord, Blocks]:  # fmt: skip
    """A self-consistent segment (PROTOCOLS.md 1.2) with random content."""
    data = random.Random(seed).randbytes(length)
    if version == 2:
        algorithm = ALG_V2_TRUNCATED_SHA512
    size = 65536 if version == 1 else length
    blocks = [
        (i, data[off : off + size], block_digest(algorithm, data[off : off + size]))
        for i, off in enumerate(range(0, length, size))
    ]
    hod = block_digest(algorithm, b"".join(h for _, _, h in blocks))
    if version == 2:
        hod = blocks[0][2]
    secret = block_digest(algorithm, b"secret %d" % seed)
    sid = derive_segment_id(algorithm, hod, secret)
    return SegmentRecord(sid, version, algorithm, hod, secret, length, size), blocks


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[BlockCache]:
    c = BlockCache.open(tmp_path / "cache", limit_bytes=1 << 30)
    yield c
    c.close()


def test_v1_round_trip_survives_reopen(tmp_path: Path) -> None:
    record, blocks = make_segment(1)
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        c.add_segment(record)
        assert c.segment(record.segment_id) == record
        assert c.held_blocks(record.segment_id) == []
        c.put_blocks(record.segment_id, blocks[1:3])
        c.put_block(record.segment_id, 0, memoryview(blocks[0][1]), blocks[0][2])
        assert c.usage().blocks == 3
    with BlockCache.open(tmp_path, limit_bytes=1 << 30) as c:
        sid = record.segment_id
        assert c.segment(sid) == record
        assert c.held_blocks(sid) == [0, 1, 2]
        assert not c.has_block(sid, 3) and c.has_block(sid, 2)
        for index, data, _ in blocks[:3]:
            assert c.read_block(sid, index) == data
        assert c.read_block(sid, 1, 100, 50) == blocks[1][1][100:150]
        assert c.read_block(sid, 1, 65500) == blocks[1][1][65500:]
        assert c.read_block(sid, 1, 65536) == b""
        assert c.read_block(sid, 3) is None
        assert c.read_block(sid, 2, expected=blocks[2][2]) == blocks[2][1]
        assert c.read_block(sid, 2, expected=blocks[1][2]) is None  # another reader's block
        usage = c.usage()
        assert (usage.bytes_used, usage.segments, usage.blocks, usage.evictions) == (
            3 * 65536,
            1,
            3,
            0,
        )
        assert c.block_counts([sid, make_segment(2)[0].segment_id]) == {sid: 3}


def test_v2_segment_and_short_last_block(cache: BlockCache) -> None:
    v2, v2_blocks = make_segment(3, length=39390, version=2)
    v1, v1_blocks = make_segment(4, length=65536 + 7, algorithm=ALG_SHA384)
    cache.add_segment(v2)
    cache.add_segment(v1)
    cache.put_blocks(v2.segment_id, v2_blocks)
    cache.put_blocks(v1.segment_id, v1_blocks)
    assert cache.read_block(v2.segment_id, 0) == v2_blocks[0][1]
    assert cache.read_block(v1.segment_id, 1) == v1_blocks[1][1]
    assert len(v1_blocks[1][1]) == 7
    assert cache.usage().bytes_used == 39390 + 65536 + 7


def test_add_segment_is_idempotent_and_refuses_conflicts(cache: BlockCache) -> None:
    record, blocks = make_segment(5)
    cache.add_segment(record, [h for _, _, h in blocks])
    cache.add_segment(record)
    assert cache.usage().segments == 1
    cache.put_blocks(record.segment_id, blocks)  # the proven last block pins the length
    other_length = SegmentRecord(
        record.segment_id, 1, record.algorithm, record.hod, record.secret, 65536, 65536
    )
    with pytest.raises(VerificationError):
        cache.add_segment(other_length)


def test_real_vector_segment_id_accepted_and_forgery_rejected(cache: BlockCache) -> None:
    # pccrc_v1_iis85.json (iPXE pccrc_test.c, IIS 8.5 capture): HoD, Kp and HoHoDk.
    hod = bytes.fromhex("d8d976354a4872e925761803f458d9daaa67f8e31c630fb74e6a312ef8a25aba")
    kp = bytes.fromhex("11afc0d7949243f94f9c1fab35d9fd1e331fcf7811a2e01d3587b38d770a29e2")
    sid = bytes.fromhex("491b217dbee2b5f12ca79b015e06f4bbe64f9745bad7867aef17de59927edce9")
    cache.add_segment(SegmentRecord(sid, 1, ALG_SHA256, hod, kp, 99710, 65536))
    assert cache.segment(sid) is not None
    forged = bytes([sid[0] ^ 1]) + sid[1:]
    with pytest.raises(VerificationError):
        cache.add_segment(SegmentRecord(forged, 1, ALG_SHA256, hod, kp, 99710, 65536))
    with pytest.raises(DecodeError):  # V1 must use 64 KiB blocks
        cache.add_segment(SegmentRecord(sid, 1, ALG_SHA256, hod, kp, 99710, 4096))


@pytest.mark.parametrize("bad", [b"", b"\x00" * 31, b"\x01" * 33, b"\x02" * 65, b"x" * 4096])
def test_hostile_segment_ids_rejected(cache: BlockCache, bad: bytes) -> None:
    calls = [
        lambda: cache.segment(bad),
        lambda: cache.has_block(bad, 0),
        lambda: cache.held_blocks(bad),
        lambda: cache.read_block(bad, 0),
        lambda: cache.read_proven(bad, 0),
        lambda: cache.block_counts([bad]),
        lambda: cache.touch(bad),
        lambda: cache.put_block(bad, 0, b"x", bytes(32)),
    ]
    for call in calls:
        with pytest.raises(DecodeError):
            call()
    with pytest.raises(DecodeError), cache.pin(bad):
        pass
    assert not (cache.directory / "data").exists()


def test_put_block_rejects_blocks_that_do_not_fit(cache: BlockCache) -> None:
    record, blocks = make_segment(6)
    sid = record.segment_id
    with pytest.raises(LocalError):
        cache.put_blocks(sid, blocks)  # segment not added yet
    cache.add_segment(record)
    _, data, digest = blocks[0]
    with pytest.raises(DecodeError):
        cache.put_block(sid, 4, data, digest)  # the segment has blocks 0..3
    with pytest.raises(DecodeError):
        cache.put_block(sid, -1, data, digest)
    with pytest.raises(DecodeError):
        cache.put_block(sid, 0, data[:-1], digest)  # only the last block may be short
    with pytest.raises(DecodeError):
        cache.put_block(sid, 0, data, digest[:20])
    cache.put_block(sid, 0, data, digest)
    cache.put_block(sid, 0, data, digest)  # already held: nothing to do
    cache.add_segment(record, [h for _, _, h in blocks])  # proves block 0's hash
    with pytest.raises(VerificationError):
        cache.put_block(sid, 0, data, hashlib.sha256(b"other").digest())
    v2, v2_blocks = make_segment(7, length=1000, version=2)
    cache.add_segment(v2)
    with pytest.raises(VerificationError):
        cache.put_block(v2.segment_id, 0, v2_blocks[0][1], bytes(32))
    assert cache.usage().blocks == 1


def test_read_block_range_checked(cache: BlockCache) -> None:
    record, blocks = make_segment(8, length=1000)
    cache.add_segment(record)
    cache.put_blocks(record.segment_id, blocks)
    assert cache.read_block(record.segment_id, 0, 990, 100) == blocks[0][1][990:]
    with pytest.raises(InvalidParameter):
        cache.read_block(record.segment_id, 0, 1001)
    with pytest.raises(InvalidParameter):
        cache.read_block(record.segment_id, 0, -1)
    with pytest.raises(InvalidParameter):
        cache.read_block(record.segment_id, 0, 0, -5)


def test_directory_is_locked_against_a_second_cache(tmp_path: Path) -> None:
    with (
        BlockCache.open(tmp_path, limit_bytes=1 << 20),
        pytest.raises(LocalError, match="in use"),
    ):
        BlockCache.open(tmp_path, limit_bytes=1 << 20)
    BlockCache.open(tmp_path, limit_bytes=1 << 20).close()


def test_segment_ids_never_reach_paths(cache: BlockCache) -> None:
    record, blocks = make_segment(9, length=500)
    cache.add_segment(record)
    cache.put_blocks(record.segment_id, blocks)
    names = [p.name for p in (cache.directory / "data").rglob("*")]
    assert names == ["01", "1.seg"]
