"""Partial holders, with real daemons in a namespace of the test's own: a node holding part of a
content answers discovery with the blocks it holds (BlockCount) and GETBLKS with what it has
(an empty MSG_BLK for the rest), and readers take blocks from partial holders."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.content import BLOCK, content, content_information
from tests.harness import DaemonProcess
from tests.peers.test_peers_loopback import counters, nodes, read_all

# Runs inside the namespace: what iPXE does, and nothing more. One multicast Probe for the
# segment, then one MSG_GETBLKS per block to the XAddr of the ProbeMatch.
IPXE = textwrap.dedent(
    """
    import hashlib, http.client, json, socket, sys
    from peerdistd.proto.pccrd import GROUP_V4, PORT, Probe, new_message_id, parse_probe_match
    from peerdistd.proto import pccrr_client
    from peerdistd.proto.pccrr import MAGIC_PATH
    sid, kp = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
    lengths = [int(n) for n in sys.argv[3].split(",")]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.9", 0))
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.9"))
    udp.settimeout(10)
    mid = new_message_id()
    udp.sendto(Probe(mid, (sid,), 1).to_bytes(), (GROUP_V4, PORT))
    match = parse_probe_match(udp.recv(65536), {mid: (sid,)})
    host, port = match.xaddrs[0].rsplit(":", 1)
    blocks = []
    for index, length in enumerate(lengths):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("POST", MAGIC_PATH, pccrr_client.block_request(sid, index))
        body = conn.getresponse().read()
        conn.close()
        answer = pccrr_client.parse_block(body, sid, index, kp, length, busy=False)
        blocks.append(hashlib.sha256(answer.data).hexdigest() if answer.data else None)
    print(json.dumps({"counts": dict((s.hex(), n) for s, n in match.block_counts),
                      "blocks": blocks}))
    """
)


async def add_data(d: DaemonProcess, ci: bytes, offset: int, data: bytes) -> None:
    """What an application does after a miss: add the bytes it got from the origin."""
    async with d.session() as api:
        async with api.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        async with api.put(
            f"/v1/contents/{h}/data", params={"offset": str(offset)}, data=io.BytesIO(data)
        ) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["verified"] == len(data)


async def test_an_ipxe_client_gets_blocks_from_a_partial_holder(tmp_path: Path, netns: str) -> None:
    data = content(8 * BLOCK + 100, seed=71)
    info = content_information(data)
    ci = info.to_bytes()
    refs = list(info.blocks())
    seg = refs[0].segment
    with nodes(tmp_path, netns, 1) as (b,):
        await add_data(b, ci, 0, data[: 5 * BLOCK])  # B holds blocks 0-4 of 9
        out = await asyncio.to_thread(
            subprocess.run,
            ["ip", "netns", "exec", netns, sys.executable, "-c", IPXE,
             seg.segment_id.hex(), seg.secret.hex(), ",".join(str(r.end - r.start) for r in refs)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout)
        assert got["counts"] == {seg.segment_id.hex(): 5}  # 2.2.2.2 BlockCount: blocks held
        assert got["blocks"][:5] == [r.hash.hex() for r in refs[:5]]
        assert got["blocks"][5:] == [None] * 4  # SizeOfBlock 0: not held


async def test_a_reader_takes_a_content_from_two_partial_holders(
    tmp_path: Path, netns: str
) -> None:
    data = content(9 * BLOCK + 100, seed=72)
    ci = content_information(data).to_bytes()
    with nodes(tmp_path, netns, 3) as (a, b, c):
        await add_data(a, ci, 0, data[: 4 * BLOCK])  # A holds blocks 0-3
        await add_data(b, ci, 4 * BLOCK, data[4 * BLOCK :])  # B the rest
        assert await read_all(c, ci) == data
        got = await counters(c)
        assert got["bytes_from_peers"] == len(data) and got["banned_peers"] == 0
        served = [(await counters(n))["bytes_served_to_peers"] for n in (a, b)]
        assert served[0] >= 4 * BLOCK and served[1] >= len(data) - 4 * BLOCK
