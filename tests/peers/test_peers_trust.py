"""Peers receive only proven blocks whose bytes still hash to their hash (docs/trust.md):
two real daemons on 127.0.0.1-2 in a network namespace of the test's own."""

from __future__ import annotations

import random
from pathlib import Path

from tests.content import BLOCK, content, content_information
from tests.daemon.test_trust_reads import flip_byte, forged_range, segment_files
from tests.harness import DaemonProcess
from tests.peers.test_peers_loopback import counters, nodes, publish


async def read_until_error(d: DaemonProcess, ci: bytes) -> tuple[bytes, dict]:
    """Stream-read with peers allowed until the first error; (bytes read, the error)."""
    out = b""
    async with d.session() as api:
        async with api.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        while True:
            params = {"max": str(1 << 20), "timeout_ms": "3000"}
            async with api.post(f"/v1/contents/{h}/stream-read", params=params) as r:
                if r.status != 200:
                    return out, dict(await r.json())
                out += await r.read()


async def test_a_block_corrupted_on_disk_is_not_served_to_peers(tmp_path: Path, netns: str) -> None:
    data = random.Random(91).randbytes(4 * BLOCK)
    with nodes(tmp_path, netns, 2, PEERDISTD_CACHE_SCRUB_BYTES_PER_SECOND="0") as (a, b):
        ci = await publish(a, data)
        (seg_file,) = segment_files(tmp_path, "node1")
        flip_byte(seg_file, 2 * BLOCK + 77)
        got, error = await read_until_error(b, ci)
        assert got == data[: 2 * BLOCK]
        assert (error["error"], error["offset"]) == ("MISSING_DATA", 2 * BLOCK)
        got_b = await counters(b)
        assert got_b["bad_blocks"] == 0  # the corrupt bytes never left A
        assert got_b["bytes_from_peers"] == 2 * BLOCK
        assert (await counters(a))["bad_blocks_from_disk"] == 1


async def test_blocks_no_full_hash_list_vouches_for_are_not_served_to_peers(
    tmp_path: Path, netns: str
) -> None:
    data = content(8 * BLOCK, seed=92)
    genuine = content_information(data)
    evil = content(BLOCK, seed=667)
    with nodes(tmp_path, netns, 2) as (a, b):
        async with a.session() as api:  # A holds blocks 0..5 under a forged range list
            async with api.post("/v1/contents", data=forged_range(genuine, evil)) as r:
                h = (await r.json())["handle"]
            body = data[: 5 * BLOCK] + evil
            async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=body) as r:
                assert r.status == 200 and (await r.json())["verified"] == 6 * BLOCK
        got, error = await read_until_error(b, genuine.to_bytes())
        assert (got, error["error"], error["offset"]) == (b"", "MISSING_DATA", 0)
        assert (await counters(b))["bad_blocks"] == 0
        assert (await counters(a))["bytes_served_to_peers"] == 0
