"""Content-information generation against hashlib over the same bytes (``make bench``).

V1 (SHA-256) and V2 (truncated SHA-512, FastCDC chunking included) of a 1 GiB file read from
the page cache, on one hashing worker and on every core, as a ratio to one thread of
``hashlib`` reading and hashing the same file; then the peak RSS of hashing a 4 GiB (sparse)
file in a fresh process. Options: ``--size-mib N`` (default 1024), ``--big-gib N`` (4).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from peerdistd.proto.pccrc import server_secret_key
from peerdistd.store.hasher import hash_file

READ = 1024 * 1024
KS = server_secret_key(b"benchmark", 1)

# VmHWM, not ru_maxrss: the latter keeps the high-water mark of the forked parent.
_RSS_SCRIPT = """
import sys
from peerdistd.store.hasher import hash_file
info = hash_file(sys.argv[1], version=int(sys.argv[2]), ks=bytes(32))
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(int(hwm.split()[1]), len(info.segments))
"""


def _make_file(path: Path, size: int, *, unique: int | None = None) -> None:
    """Random bytes; with ``unique``, one random piece of that size written over and over."""
    rnd = random.Random(1)
    piece = rnd.randbytes(unique) if unique else b""
    with path.open("wb") as f:
        while (left := size - f.tell()) > 0:
            f.write(piece[:left] if unique else rnd.randbytes(min(64 * READ, left)))


def _hashlib_over_file(path: Path, name: str) -> None:
    h = hashlib.new(name)
    buf = bytearray(READ)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])


def _best(fn: Callable[[], object], repeat: int = 2) -> tuple[float, float]:
    """Best wall time of ``repeat`` runs, and the CPU time (all threads) of that run."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - started, time.process_time() - cpu))
    return best


def _peak_rss(path: Path, version: int) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(path), str(version)],
        capture_output=True,
        text=True,
        check=True,
    )
    kib, segments = out.stdout.split()
    return int(kib) / 1024, int(segments)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_hash")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--big-gib", type=int, default=4)
    args = parser.parse_args(argv)
    size = args.size_mib * READ
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="peerdist-bench-") as tmp:
        path = Path(tmp) / "content.bin"
        _make_file(path, size)
        _hashlib_over_file(path, "sha256")  # warm the page cache
        for version, name in ((1, "sha256"), (2, "sha512")):
            base, _ = _best(lambda n=name: _hashlib_over_file(path, n))  # type: ignore[misc]
            print(f"   hashlib.{name}, one thread: {size / base / 1e6:6.0f} MB/s", flush=True)
            for workers in sorted({1, cores}):
                took, cpu = _best(
                    lambda v=version, w=workers: hash_file(path, version=v, ks=KS, workers=w)  # type: ignore[misc]
                )
                goal = "0.9" if workers == 1 else "1.6"
                print(
                    f"   V{version} hash_file, {workers} worker(s): {size / took / 1e6:6.0f} MB/s,"
                    f" ratio {base / took:.2f}x (goal {goal}x), {cpu / took:.2f} cores busy",
                    flush=True,
                )
        path.unlink()
        # V2 memory grows with the number of segments, so the big file must chunk like real
        # data: 64 MiB of random bytes repeated (it fits the page cache and writes quickly).
        big = Path(tmp) / "big.bin"
        _make_file(big, args.big_gib * 1024 * READ, unique=64 * READ)
        for version in (1, 2):
            rss, segments = _peak_rss(big, version)
            print(
                f"   V{version} hash_file of {args.big_gib} GiB ({segments} segments):"
                f" peak RSS {rss:.0f} MiB (goal < 100)",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
