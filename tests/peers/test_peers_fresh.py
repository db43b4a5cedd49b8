"""Blocks fetched from a peer and verified are handed to the reads they were fetched for from
memory, not read back from the cache file and hashed again (engine.fresh); only while the
cache still holds them under the reader's hash. Two real daemons on 127.0.0.1-2 in a network
namespace of the test's own."""

from __future__ import annotations

import random
from pathlib import Path

import aiohttp

from tests.content import BLOCK
from tests.daemon.test_trust_reads import flip_byte, segment_files
from tests.peers.test_peers_loopback import counters, nodes, publish

BLOCKS = 8
NO_SCRUB = {"PEERDISTD_CACHE_SCRUB_BYTES_PER_SECOND": "0"}


async def stream_read(api: aiohttp.ClientSession, h: str, blocks: int) -> tuple[int, bytes]:
    params = {"max": str(blocks * BLOCK), "timeout_ms": "5000"}
    async with api.post(f"/v1/contents/{h}/stream-read", params=params) as r:
        return r.status, await r.read()


async def open_and_fetch(api: aiohttp.ClientSession, ci: bytes, data: bytes) -> str:
    """Read blocks 0 and 1 one at a time: the second read waits for the read-ahead run that
    brings blocks 1..7, so B holds them all (staged, unread but block 1) on return."""
    async with api.post("/v1/contents", data=ci) as r:
        h = str((await r.json())["handle"])
    assert await stream_read(api, h, 1) == (200, data[:BLOCK])
    assert await stream_read(api, h, 1) == (200, data[BLOCK : 2 * BLOCK])
    return h


async def test_a_fetched_block_is_served_from_the_verified_bytes(
    tmp_path: Path, netns: str
) -> None:
    data = random.Random(95).randbytes(BLOCKS * BLOCK)
    with nodes(tmp_path, netns, 2, **NO_SCRUB) as (a, b):
        ci = await publish(a, data)
        async with b.session() as api:
            h = await open_and_fetch(api, ci, data)
            (seg_file,) = segment_files(tmp_path, "node2")
            # The cache file changes under the daemon after the fetch verified block 5: the
            # read takes the bytes that were verified, not the file's.
            flip_byte(seg_file, 5 * BLOCK + 99)
            assert await stream_read(api, h, BLOCKS) == (200, data[2 * BLOCK :])
        got = await counters(b)
        assert got["bad_blocks_from_disk"] == 0  # the file was not read for them
        assert got["bytes_from_peers"] == len(data)
        assert (await counters(a))["bytes_served_to_peers"] == len(data)


async def test_fetched_bytes_are_not_served_once_the_cache_let_them_go(
    tmp_path: Path, netns: str
) -> None:
    data = random.Random(96).randbytes(BLOCKS * BLOCK)
    with nodes(tmp_path, netns, 2, **NO_SCRUB) as (a, b):
        ci = await publish(a, data)
        async with b.session() as api:
            h = await open_and_fetch(api, ci, data)
            served = (await counters(a))["bytes_served_to_peers"]
            assert served == len(data)
            async with api.delete("/v1/cache") as r:
                assert r.status == 200
            # Fetched for this reader and never read, but no longer in the cache: fetched
            # again from A, not handed out from memory.
            assert await stream_read(api, h, 1) == (200, data[2 * BLOCK : 3 * BLOCK])
        assert (await counters(a))["bytes_served_to_peers"] > served
