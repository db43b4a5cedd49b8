"""kill -9 while the cache writes: the running totals are written in the same transaction as
the rows they count (store/index.py), so whatever a killed writer left, the totals reopened
equal the rows. A child process stages and commits runs of V2 segments and evicts, in a
loop; the parent kills it with SIGKILL once it has committed a few batches."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peerdistd.store.blockcache import BlockCache
from tests.store.test_store_totals import check

WRITER = r"""
import sys
from pathlib import Path
from peerdistd.store.blockcache import BlockCache
from tests.store.test_store_stage import item

root = Path(sys.argv[1])
with BlockCache.open(root, limit_bytes=1 << 30, sync=True) as cache:
    seed = 0
    while True:
        cache.stage([item(seed + n) for n in range(8)])
        seed += 8
        cache.commit_staged()
        if seed % 64 == 0:
            cache.set_limit(limit_bytes=16 * 10_000)  # evict most, in its own transactions
            cache.set_limit(limit_bytes=1 << 30)
        print(seed, flush=True)
"""


@pytest.mark.parametrize("batches", [3, 11])
def test_totals_equal_the_rows_after_kill_9_mid_write(tmp_path: Path, batches: int) -> None:
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert child.stdout is not None
        for _ in range(batches):  # committed batches reported by the child, not a sleep
            assert child.stdout.readline(), "the writer stopped on its own"
        os.kill(child.pid, signal.SIGKILL)  # the next run is being staged or committed
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    with BlockCache.open(tmp_path, limit_bytes=1 << 30, sync=True) as cache:
        check(cache)
        assert cache.usage().segments >= 1
