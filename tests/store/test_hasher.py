"""Hashing files and streams, checked against a reference built from hashlib and hmac."""

from __future__ import annotations

import hashlib
import hmac
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerdistd.errors import InvalidParameter, LocalError
from peerdistd.proto import chunking
from peerdistd.proto.pccrc import ContentInformation, HashAlgorithm, server_secret_key
from peerdistd.store.hasher import StreamHasher, hash_bytes, hash_file

MIB = 1024 * 1024
SEG = 32 * MIB
BLOCK = 65536
MAGIC = "MS_P2P_CACHING\0".encode("utf-16-le")
PASS = b"hasher test passphrase"
KS1 = hashlib.sha256(PASS).digest()
KS2 = hashlib.sha512(PASS).digest()[:32]
DATA = random.Random(5).randbytes(2 * SEG + 100_000)  # three V1 segments, shared by the tests

SIZES = [0, 1, 65535, 65536, 65537, SEG - 1, SEG, SEG + 1, len(DATA)]


def reference_v1(
    data: bytes, name: str = "sha256"
) -> list[tuple[int, int, bytes, bytes, bytes, list[bytes]]]:
    """(offset, length, HoD, Kp, HoHoDk, block hashes) per segment, straight from PROTOCOLS 1.2."""
    out = []
    for offset in range(0, len(data), SEG):
        seg = data[offset : offset + SEG]
        hashes = [hashlib.new(name, seg[i : i + BLOCK]).digest() for i in range(0, len(seg), BLOCK)]
        hod = hashlib.new(name, b"".join(hashes)).digest()
        kp = hmac.digest(KS1, hod, name)
        out.append((offset, len(seg), hod, kp, hmac.digest(kp, hod + MAGIC, name), hashes))
    return out


def reference_v2(data: bytes) -> list[tuple[int, int, bytes, bytes, bytes]]:
    out, offset = [], 0
    for length in chunking.cut(data, final=True):
        hod = hashlib.sha512(data[offset : offset + length]).digest()[:32]
        kp = hmac.digest(KS2, hod, "sha512")[:32]
        out.append((offset, length, hod, kp, hmac.digest(kp, hod + MAGIC, "sha512")[:32]))
        offset += length
    return out


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hasher") / "content.bin"
    path.write_bytes(DATA)
    return path


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", SIZES)
def test_v1_file_matches_reference(tmp_path: Path, size: int) -> None:
    data = DATA[:size]
    info = hash_file(_write(tmp_path, data), ks=KS1, workers=2)
    assert (info.version, info.start, info.end) == (1, 0, size)
    got = [
        (s.offset, s.length, s.hod, s.secret, s.segment_id, list(s.block_hashes))
        for s in info.segments
    ]
    assert got == reference_v1(data)
    assert [s.index for s in info.segments] == list(range(len(got)))
    assert ContentInformation.parse(info.to_bytes()) == info
    assert hash_bytes(data, ks=KS1) == info


@pytest.mark.parametrize("size", SIZES)
def test_v2_file_matches_reference(tmp_path: Path, size: int) -> None:
    data = DATA[:size]
    info = hash_file(_write(tmp_path, data), version=2, ks=KS2, workers=2)
    assert (info.version, info.algorithm, info.start, info.end) == (
        2,
        HashAlgorithm.TRUNCATED_SHA512,
        0,
        size,
    )
    got = [(s.offset, s.length, s.hod, s.secret, s.segment_id) for s in info.segments]
    assert got == reference_v2(data)
    assert all(s.block_hashes == (s.hod,) and s.block_count == 1 for s in info.segments)
    assert ContentInformation.parse(info.to_bytes()) == info
    assert hash_bytes(data, version=2, ks=KS2) == info


@pytest.mark.parametrize("name", ["sha384", "sha512"])
def test_v1_other_algorithms(tmp_path: Path, name: str) -> None:
    data = DATA[: 3 * BLOCK + 17]
    info = hash_file(_write(tmp_path, data), algorithm=HashAlgorithm.from_name(name), ks=KS1)
    seg = info.segments[0]
    ((_, _, hod, kp, sid, hashes),) = reference_v1(data, name)
    assert (seg.hod, seg.secret, seg.segment_id, list(seg.block_hashes)) == (hod, kp, sid, hashes)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("offset", "length"),
    [
        (0, 1),
        (5, 100),  # inside the first block
        (BLOCK - 1, 2),  # across a block boundary
        (SEG - 10, 20),  # across a segment boundary
        (SEG + 3 * BLOCK + 7, SEG - 3 * BLOCK + 50_000),  # inside segment 1 into segment 2
        (100_000, 2 * SEG),  # from segment 0 to the end
        (2 * SEG + 99_999, 1),  # the last byte
    ],
)
def test_range_equals_sub_range_of_whole(
    data_file: Path, version: int, offset: int, length: int
) -> None:
    ks = KS1 if version == 1 else KS2
    whole = hash_file(data_file, version=version, ks=ks)
    ranged = hash_file(data_file, version=version, ks=ks, offset=offset, length=length)
    assert ranged == whole.sub_range(offset, length)
    assert (ranged.start, ranged.end) == (offset, offset + length)
    assert ContentInformation.parse(ranged.to_bytes()) == ranged


def test_offset_without_length_runs_to_the_end(data_file: Path) -> None:
    info = hash_file(data_file, ks=KS1, offset=SEG + 1)
    assert (info.start, info.end, [s.index for s in info.segments]) == (SEG + 1, len(DATA), [1, 2])


def test_one_worker_and_two_agree(data_file: Path) -> None:
    for version in (1, 2):
        one = hash_file(data_file, version=version, ks=KS1, workers=1)
        assert hash_file(data_file, version=version, ks=KS1, workers=2) == one


@pytest.mark.parametrize("version", [1, 2])
def test_stream_hasher_matches_file_and_returns_the_bytes(data_file: Path, version: int) -> None:
    ks = KS1 if version == 1 else KS2
    hasher = StreamHasher(version=version, algorithm=HashAlgorithm.SHA256, ks=ks)
    rnd = random.Random(version)
    pos, out = 0, []
    while pos < len(DATA):
        step = rnd.choice([1, 1000, 65535, 65536, 3 * MIB + 1])
        out += hasher.feed(memoryview(DATA)[pos : pos + step])
        pos += step
    out += hasher.finish()
    assert hasher.size == len(DATA)
    info = hasher.content_information()
    assert info == hash_file(data_file, version=version, ks=ks)
    assert [h.segment for h in out] == list(info.segments)
    assert b"".join(h.data for h in out) == DATA
    assert all(len(h.data) == h.segment.length for h in out)


def test_stream_hasher_emits_v1_segments_as_they_complete() -> None:
    hasher = StreamHasher(version=1, algorithm=HashAlgorithm.SHA256, ks=KS1)
    assert hasher.feed(DATA[: SEG - 1]) == []
    done = hasher.feed(DATA[SEG - 1 : SEG + 5])
    assert [h.segment.index for h in done] == [0] and done[0].data == DATA[:SEG]
    assert [h.segment.length for h in hasher.finish()] == [5]
    assert hasher.finish() == []
    with pytest.raises(InvalidParameter):
        hasher.feed(b"late")


def test_stream_hasher_empty_content() -> None:
    for version in (1, 2):
        hasher = StreamHasher(version=version, algorithm=HashAlgorithm.SHA256, ks=KS1)
        with pytest.raises(InvalidParameter):
            hasher.content_information()
        assert hasher.finish() == []
        info = hasher.content_information()
        assert (info.version, info.segments, info.start, info.end) == (version, (), 0, 0)


def test_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, b"")
    assert hash_file(path, ks=KS1).to_bytes() == bytes.fromhex("00010c80") + bytes(14)
    assert hash_file(path, version=2, ks=KS2).to_bytes() == bytes.fromhex("000204") + bytes(28)
    assert hash_file(path, ks=KS1, offset=0, length=0).segments == ()
    with pytest.raises(InvalidParameter):
        hash_file(path, ks=KS1, offset=0, length=1)


def test_bad_arguments(tmp_path: Path) -> None:
    path = _write(tmp_path, b"abc")
    for offset, length in [(3, None), (0, 4), (2, 2), (1, 0)]:
        with pytest.raises(InvalidParameter):
            hash_file(path, ks=KS1, offset=offset, length=length)
    with pytest.raises(InvalidParameter):
        hash_file(path, version=2, algorithm=HashAlgorithm.SHA384, ks=KS1)
    with pytest.raises(InvalidParameter):
        hash_file(path, version=1, algorithm=HashAlgorithm.TRUNCATED_SHA512, ks=KS1)
    with pytest.raises(LocalError):
        hash_file(tmp_path / "missing", ks=KS1)
    with pytest.raises(LocalError):
        hash_file(tmp_path, ks=KS1)  # a directory


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300_000), st.sampled_from([1, 2]))
def test_generate_parse_round_trip_and_blocks_verify(data: bytes, version: int) -> None:
    info = hash_bytes(data, version=version, ks=server_secret_key(PASS, version))
    assert ContentInformation.parse(info.to_bytes()) == info
    refs = list(info.blocks())
    assert b"".join(data[r.start : r.end] for r in refs) == data
    assert all(info.verify_block(r, data[r.start : r.end]) for r in refs)
