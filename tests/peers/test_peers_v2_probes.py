"""Discovery when several nodes read one V2 content together, with real daemons on
127.0.0.x in a network namespace of the test's own (docs/benchmarks.md, "Probes when ten
nodes read together").

V2 content information makes every ~128 KiB of content a segment of its own. Nodes that read
together are no further on than one another, so the holder each guesses from the content's
trail (the peer that served it last) usually lacks the next segment too. Each such segment
was then asked about alone: ten nodes reading 128 MiB sent ~1,700 probes each, and every node
parsed and looked up the ~15,000 of the others. The segments around a failed guess are now
asked about in one round, and every segment still gets its discovery answer.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from peerdistd.proto.pccrc import ContentInformation
from tests.peers.test_peers_loopback import counters, nodes
from tests.peers.test_peers_single_flight import MIB, content_information, fetch, origin


def test_v2_nodes_reading_together_send_few_probes(tmp_path: Path, netns: str) -> None:
    data = random.Random(93).randbytes(12 * MIB + 4321)
    ci = content_information(tmp_path, data, 2)
    segments = len(ContentInformation.parse(ci).segments)
    with nodes(tmp_path, netns, 5) as ds:

        async def run() -> None:
            async with origin(data) as o:
                got = await asyncio.gather(*(fetch(d, ci, o.url) for d in ds))
                assert all(g == data for g in got)
                assert o.served <= 1.2 * len(data)
                stats = [await counters(d) for d in ds]
                sent = [int(s["probes_sent"]) for s in stats]
                # Before: 75 for 175 segments; now 20 (one probe holds 14 ids).
                assert max(sent) <= segments / 4, (sent, segments)
                assert sum(int(s["bytes_from_peers"]) for s in stats) >= 3 * len(data)

        asyncio.run(run())
