"""A V2 content read between two real daemons (issue 9: "Locate once", "Both versions").

V2 content information cuts a content into segments of at most 128 KiB (~8,000 per GiB).
Reading one from a peer must locate per content, not per segment: the first read waits for
one discovery round, later segments are asked of the peer that served the earlier ones.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from tests.harness import DaemonProcess
from tests.peers.test_peers_loopback import counters, nodes, read_all

SIZE = 24 * 2**20 + 4321  # a few hundred V2 segments


async def publish_v2(d: DaemonProcess, data: bytes) -> bytes:
    async with d.session() as api:
        params = {"id": "v2", "version": "2"}
        async with api.post("/v1/publications", params=params, data=io.BytesIO(data)) as r:
            assert r.status == 201, await r.text()
        async with api.get("/v1/publications/v2/content-information") as r:
            return await r.read()


async def test_a_v2_content_needs_a_handful_of_discovery_rounds(tmp_path: Path, netns: str) -> None:
    data = random.Random(9).randbytes(SIZE)
    with nodes(tmp_path, netns, 2) as (a, b):
        ci = await publish_v2(a, data)
        assert ci[:2] == b"\x00\x02"  # V2 content information
        assert await read_all(b, ci) == data
        got = await counters(b)
    assert got["bytes_from_peers"] == SIZE and got["bytes_from_origin"] == 0
    # 25 reads of 1 MiB over a few hundred segments: the first read waits for discovery,
    # every later one finds its segments' holder in the directory (the content's trail).
    assert got["discovery_attempts"] == got["discovery_successes"] == 1
