"""Block cache: open time of a large index, and verified read_block against pread + SHA-256.

``python -m benchmarks cache`` (or ``python -m benchmarks.bench_cache --blocks N``). The large
index is bulk-inserted straight into SQLite (its blocks have no data: opening reads no data),
then opened through BlockCache. Reads are 64 KiB blocks of a 32 MiB segment, page-cache warm,
each re-hashed as every read is (docs/trust.md), measured against ``os.pread`` plus
``hashlib.sha256`` of the same file in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from peerdistd.store.blockcache import BlockCache, SegmentRecord
from peerdistd.store.cache_types import ALG_SHA256, derive_segment_id

BS = 65536
PER_SEGMENT = 512
OPEN_GOAL_S = 2.0


def _record(seed: int) -> SegmentRecord:
    hod = hashlib.sha256(b"hod %d" % seed).digest()
    secret = hashlib.sha256(b"kp %d" % seed).digest()
    sid = derive_segment_id(ALG_SHA256, hod, secret)
    return SegmentRecord(sid, 1, ALG_SHA256, hod, secret, PER_SEGMENT * BS, BS)


def build_index(directory: Path, blocks: int) -> None:
    """Create a cache whose index lists ``blocks`` blocks of 1-byte length."""
    BlockCache.open(directory, limit_bytes=1 << 40).close()
    segments = -(-blocks // PER_SEGMENT)
    digest = bytes(32)
    db = sqlite3.connect(directory / "index.sqlite", isolation_level=None)
    db.execute("BEGIN")
    for seg in range(segments):
        r = _record(seg)
        db.execute(
            "INSERT INTO segments(segment_id, version, algorithm, hod, secret, length,"
            " block_size, blocks, bytes, last_used) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (r.segment_id, 1, r.algorithm, r.hod, r.secret, r.length, BS, 0, 0, seg),
        )
    rows = ((seg + 1, i, 1, digest) for n in range(blocks) for seg, i in [divmod(n, PER_SEGMENT)])
    db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", rows)
    db.execute(
        "UPDATE segments SET blocks = (SELECT count(*) FROM blocks WHERE seg = id),"
        " bytes = (SELECT count(*) FROM blocks WHERE seg = id)"
    )
    db.execute("UPDATE totals SET bytes = ?, blocks = ?, segments = ?", (blocks, blocks, segments))
    db.execute("COMMIT")
    db.close()


def bench_open(directory: Path, blocks: int) -> None:
    started = time.perf_counter()
    build_index(directory, blocks)
    built = time.perf_counter() - started
    started = time.perf_counter()
    cache = BlockCache.open(directory, limit_bytes=1 << 40)
    opened = time.perf_counter() - started
    usage = cache.usage()
    started = time.perf_counter()
    held = cache.held_blocks(_record(blocks // PER_SEGMENT // 2).segment_id)
    first = time.perf_counter() - started
    cache.close()
    assert usage.blocks == blocks and len(held) == PER_SEGMENT
    print(f"   index of {blocks:,} blocks built in {built:.1f} s")
    print(
        f"   open: {opened * 1000:.1f} ms = {opened / OPEN_GOAL_S:.4f} of the {OPEN_GOAL_S:.0f} s"
        f" goal; first lookup of a segment: {first * 1000:.2f} ms"
    )


def bench_reads(directory: Path, rounds: int) -> None:
    record = _record(-1)
    data = [os.urandom(BS) for _ in range(PER_SEGMENT)]
    rows = [(i, d, hashlib.sha256(d).digest()) for i, d in enumerate(data)]
    with BlockCache.open(directory, limit_bytes=1 << 30) as cache:
        cache.add_segment(record)
        started = time.perf_counter()
        cache.put_blocks(record.segment_id, rows)
        wrote = time.perf_counter() - started
        sid = record.segment_id
        path = next((directory / "data").rglob("*.seg"))
        total = rounds * PER_SEGMENT * BS
        for index in range(PER_SEGMENT):  # warm both paths equally
            cache.read_block(sid, index)
        fd = os.open(path, os.O_RDONLY)
        ours = plain = 0.0
        expected = [digest for _, _, digest in rows]
        for _ in range(rounds):  # interleaved, so both see the same machine state
            started = time.perf_counter()
            for index in range(PER_SEGMENT):
                cache.read_block(sid, index, expected=expected[index])
            middle = time.perf_counter()
            for index in range(PER_SEGMENT):  # what a verified read must do at least
                hashlib.sha256(os.pread(fd, BS, index * BS)).digest()
            plain += time.perf_counter() - middle
            ours += middle - started
        os.close(fd)
    mb = total / 1e6
    print(f"   put_blocks 32 MiB (one fdatasync): {PER_SEGMENT * BS / 1e6 / wrote:.0f} MB/s")
    print(
        f"   read_block 64 KiB (verified): {mb / ours:.0f} MB/s, os.pread + sha256:"
        f" {mb / plain:.0f} MB/s, ratio {plain / ours:.2f}"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_cache")
    parser.add_argument("--blocks", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=16)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="peerdist-bench-") as tmp:
        bench_open(Path(tmp) / "big", args.blocks)
        bench_reads(Path(tmp) / "reads", args.rounds)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
