"""A node under a flood of garbage datagrams and garbage retrieval requests keeps serving."""

from __future__ import annotations

import asyncio
import io
import random
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.content import BLOCK
from tests.peers.test_peers_loopback import counters, nodes, read_all

# Runs inside the namespace: garbage to A's discovery port and retrieval server.
FLOOD = textwrap.dedent(
    """
    import random, socket
    rng = random.Random(7)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    for i in range(3000):
        size = rng.choice([0, 1, 40, 700, 1400, 9000, 65000])
        payload = rng.randbytes(size)
        if i % 3 == 0:
            payload = b"<?xml version='1.0'?><soap:Envelope>" + payload[:200]
        udp.sendto(payload, ("127.0.0.1", 3702))
        udp.sendto(payload, ("239.255.255.250", 3702))
    for i in range(200):
        with socket.create_connection(("127.0.0.1", 8080), timeout=5) as tcp:
            kind = i % 4
            if kind == 0:
                tcp.sendall(rng.randbytes(rng.randrange(1, 4000)))
            elif kind == 1:
                body = rng.randbytes(rng.randrange(0, 3000))
                tcp.sendall(b"POST /116B50EB-ECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\\r\\n"
                            b"Host: x\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
            elif kind == 2:
                tcp.sendall(b"POST /116B50EB-ECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\\r\\n"
                            b"Host: x\\r\\nContent-Length: 999999999\\r\\n\\r\\n")
            else:
                tcp.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            tcp.settimeout(5)
            try:
                tcp.recv(65536)
            except (TimeoutError, ConnectionError):
                pass
    print("flooded")
    """
)


async def test_garbage_flood_leaves_the_node_serving(tmp_path: Path, netns: str) -> None:
    data = random.Random(61).randbytes(16 * BLOCK + 77)
    with nodes(tmp_path, netns, 2) as (a, b):
        async with a.session() as api:
            async with api.post("/v1/publications", params={"id": "f"}, data=io.BytesIO(data)) as r:
                assert r.status == 201
            async with api.get("/v1/publications/f/content-information") as r:
                ci = await r.read()
        out = await asyncio.to_thread(
            subprocess.run,
            ["ip", "netns", "exec", netns, sys.executable, "-c", FLOOD],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert out.returncode == 0 and "flooded" in out.stdout, out.stderr
        assert a.proc.poll() is None
        # Still answering discovery and serving blocks: B gets everything from A.
        assert await read_all(b, ci) == data
        stats = await counters(a)
        assert stats["datagrams_dropped"] >= 1000
        assert (await counters(b))["bytes_from_peers"] == len(data)
