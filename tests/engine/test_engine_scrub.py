"""The background scrub's pace (engine.scrub): its rate, and yielding to a cache taking blocks.

The pace is driven through an injected ``sleep`` that records each pause: the test reads the
scrub's decisions, not a clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerdistd.engine.scrub import MAX_DEFER, QUIET, run_scrub
from peerdistd.proto.pccrc import HashAlgorithm
from peerdistd.store.blockcache import BlockCache
from peerdistd.store.cache_types import SegmentRecord
from tests.content import BLOCK, content, content_information


class Stop(Exception):
    pass


class Script:
    """A cache whose ``writes`` counter moves while ``busy``; the scrub's steps and pauses."""

    def __init__(self, pauses: int) -> None:
        self.busy = False
        self.writes = 0
        self.steps: list[int] = []
        self.pauses: list[float] = []
        self.left = pauses

    def step(self, budget: int) -> int:
        self.steps.append(budget)
        return budget

    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.busy:
            self.writes += 1  # blocks stored meanwhile
        self.left -= 1
        if self.left <= 0:
            raise Stop


async def run(script: Script, rate: int = 4 << 20) -> None:
    with pytest.raises(Stop):
        await run_scrub(script.step, lambda: rate, lambda: script.writes, script.sleep)


async def test_an_idle_cache_is_scrubbed_at_the_rate() -> None:
    script = Script(pauses=5)
    await run(script, rate=2 << 20)
    assert script.steps == [2 << 20] * 5
    assert script.pauses == [1.0] * 5  # budget / rate


async def test_a_cache_taking_blocks_is_scrubbed_once_per_max_defer() -> None:
    script = Script(pauses=200)
    script.busy = True
    await run(script)
    steps = len(script.steps)
    waited = sum(p for p in script.pauses if p == QUIET)
    assert steps >= 2
    # Between two steps the scrub waited MAX_DEFER in QUIET looks, never more.
    assert waited == pytest.approx((steps - 1) * MAX_DEFER, abs=MAX_DEFER)
    assert script.pauses[: int(MAX_DEFER / QUIET) + 2] == [1.0] + [QUIET] * int(
        MAX_DEFER / QUIET
    ) + [1.0]


async def test_the_scrub_resumes_its_rate_once_the_cache_is_quiet() -> None:
    script = Script(pauses=30)
    script.busy = True
    original = script.sleep

    async def quiet_after_three(seconds: float) -> None:
        if len(script.pauses) == 3:
            script.busy = False
        await original(seconds)

    script.sleep = quiet_after_three  # type: ignore[method-assign]
    await run(script)
    # A step; three looks that found blocks stored since the one before (the last of them
    # stored during the third pause); then steps at the rate again.
    assert script.pauses[:4] == [1.0, QUIET, QUIET, QUIET]
    assert script.pauses[4:] == [1.0] * (len(script.pauses) - 4)
    assert len(script.steps) == len(script.pauses) - 3


def test_the_cache_counts_the_calls_that_store_blocks(tmp_path: Path) -> None:
    """What the scrub watches: every call that stores blocks moves ``writes``; reads do not."""
    data = content(3 * BLOCK, seed=5)
    seg = content_information(data).segments[0]
    record = SegmentRecord(
        segment_id=seg.segment_id, version=1, algorithm=HashAlgorithm.SHA256.value,
        hod=seg.hod, secret=seg.secret, length=seg.length, block_size=seg.block_size,
    )  # fmt: skip
    with BlockCache.open(tmp_path / "cache", limit_bytes=1 << 30) as cache:
        cache.add_segment(record, seg.block_hashes)
        assert cache.writes == 0
        cache.put_block(seg.segment_id, 0, data[:BLOCK], seg.block_hashes[0])
        assert cache.writes == 1
        assert cache.read_block(seg.segment_id, 0) == data[:BLOCK]
        assert cache.writes == 1
        rows = [(1, data[BLOCK : 2 * BLOCK], seg.block_hashes[1])]
        cache.stage([(record, seg.block_hashes, rows)])
        assert cache.writes == 2
