"""A V2 content read between two real daemons (issue 9: "Locate once", "Both versions").

V2 content information cuts a content into segments of at most 128 KiB (~8,000 per GiB).
Reading one from a peer must locate per content, not per segment: the first read waits for
one discovery round, later segments are asked of the peer that served the earlier ones.
"""

from __future__ import annotations

import asyncio
import io
import random
import subprocess
from pathlib import Path

from tests.cli.clitools import PEERDIST
from tests.harness import DaemonProcess
from tests.peers.test_peers_loopback import counters, nodes

SIZE = 24 * 2**20 + 4321  # a few hundred V2 segments
NETNS_EXEC = ("ip", "netns", "exec")


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
        ci_file, out = tmp_path / "v2.ci", tmp_path / "out"
        ci_file.write_bytes(ci)
        # `peerdist fetch`: several reads of 1 MiB in flight at once, as applications read.
        # Nothing listens at the origin: every byte must come from A.
        fetch = await asyncio.to_thread(
            subprocess.run,
            [*NETNS_EXEC, netns, *PEERDIST, "fetch", "--content-info", str(ci_file),
             "--origin", "http://127.0.0.9:9/none", "--socket", str(b.socket), "-o", str(out)],
            capture_output=True, timeout=120,
        )  # fmt: skip
        assert fetch.returncode == 0, fetch.stderr.decode()
        assert out.read_bytes() == data
        got = await counters(b)
    assert got["bytes_from_peers"] == SIZE and got["bytes_from_origin"] == 0
    # A few hundred segments, read by four workers and a peer reader: only their first
    # reads wait for a discovery round; every later segment is asked of the peer that served
    # the content's earlier ones (its trail in the holder directory).
    # (None at all when the open's own lookup answered before the first read asked.)
    assert got["discovery_attempts"] <= 5
    assert got["probes_sent"] >= 1  # A was found by discovery, not known beforehand
