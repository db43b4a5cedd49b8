"""kill -9 while data is added and content published: after each restart every cached block
verifies and no acknowledged publication is lost."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
from pathlib import Path

import aiohttp

from peerdistd.store.blockcache import BlockCache
from tests.content import BLOCK, content, content_information
from tests.harness import start_daemon

ROUNDS = 4


async def _traffic(
    api: aiohttp.ClientSession,
    seed: int,
    acknowledged: set[str],
    enough: asyncio.Event,
    target: int,
) -> None:
    """Publish and add data until the daemon dies under us."""
    rng = random.Random(seed)
    data = content(40 * BLOCK + 123, seed=seed)
    ci = content_information(data).to_bytes()
    async with api.post("/v1/contents", data=ci) as r:
        h = (await r.json())["handle"]
    i = 0
    while True:
        pub_id = f"pub-{seed}-{i}"
        body = content(rng.randrange(1, 8 * BLOCK), seed=seed * 1000 + i)
        async with api.post("/v1/publications", params={"id": pub_id}, data=body) as r:
            if r.status == 201:
                acknowledged.add(pub_id)
                if len(acknowledged) >= target:
                    enough.set()
        off = rng.randrange(0, 40) * BLOCK
        async with api.put(
            f"/v1/contents/{h}/data", params={"offset": str(off)}, data=data[off : off + 6 * BLOCK]
        ) as r:
            await r.read()
        i += 1


async def test_kill_9_loses_nothing_and_serves_nothing_unverified(tmp_path: Path) -> None:
    acknowledged: set[str] = set()
    for round_no in range(ROUNDS):
        d = start_daemon(tmp_path, name="crash")
        try:
            async with d.session() as api:
                # Let real work happen: kill once two more publications were acknowledged,
                # in the middle of the next publish and add-data.
                enough = asyncio.Event()
                target = len(acknowledged) + 2
                task = asyncio.ensure_future(
                    _traffic(api, round_no + 1, acknowledged, enough, target)
                )
                await asyncio.wait_for(enough.wait(), 60)
                d.proc.send_signal(signal.SIGKILL)
                d.proc.wait()
                with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                    await task
        finally:
            d.notify.close()
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
    # Every block on disk verifies against its stored hash.
    with BlockCache.open(tmp_path / "crash-cache" / "blocks", limit_bytes=1 << 40) as cache:
        report = cache.verify()
        assert report.bad_blocks == 0, report
        assert report.blocks > 0
        assert cache.usage().blocks > 0
    # Every acknowledged publication survived.
    d = start_daemon(tmp_path, name="crash")
    try:
        async with d.session() as api, api.get("/v1/publications") as r:
            ids = {p["id"] for p in (await r.json())["publications"]}
        assert acknowledged <= ids
        assert len(acknowledged) >= 2 * ROUNDS
    finally:
        d.stop()
        d.notify.close()
