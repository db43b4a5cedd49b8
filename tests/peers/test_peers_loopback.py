"""Three real daemons on 127.0.0.1-3 in a network namespace of the test's own: publish on A,
B reads from A, C reads from A and B, bad peers are banned, timeout 0 sends nothing."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon

SIZE = 48 * BLOCK + 1234
LYING = Path(__file__).parent / "lying"  # sitecustomize of a peer that serves bad blocks


@contextlib.contextmanager
def nodes(tmp_path: Path, netns: str, count: int, **env: str) -> Iterator[list[DaemonProcess]]:
    started: list[DaemonProcess] = []
    try:
        for i in range(count):
            started.append(
                start_daemon(
                    tmp_path,
                    "--listen",
                    f"127.0.0.{i + 1}:8080",
                    name=f"node{i + 1}",
                    netns=netns,
                    env={"PEERDISTD_PEERS_ZEROCONF": "false", **env},
                )
            )
        yield started
    finally:
        for d in started:
            if d.proc.poll() is None:
                os.kill(d.proc.pid, signal.SIGCONT)  # a test may have frozen it (SIGSTOP)
                d.stop()
            d.notify.close()


async def counters(d: DaemonProcess) -> dict[str, float]:
    async with d.session() as api, api.get("/v1/status") as r:
        return dict((await r.json())["counters"])


async def publish(d: DaemonProcess, data: bytes) -> bytes:
    async with d.session() as api:
        async with api.post("/v1/publications", params={"id": "c"}, data=io.BytesIO(data)) as r:
            assert r.status == 201, await r.text()
        async with api.get("/v1/publications/c/content-information") as r:
            return await r.read()


async def read_all(d: DaemonProcess, ci: bytes, timeout_ms: int = 5000) -> bytes:
    out = b""
    async with d.session() as api:
        async with api.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        while True:
            async with api.post(
                f"/v1/contents/{h}/stream-read",
                params={"max": str(1 << 20), "timeout_ms": str(timeout_ms)},
            ) as r:
                if r.status == 416:
                    return out
                assert r.status == 200, await r.text()
                assert int(r.headers["PeerDist-Offset"]) == len(out)
                out += await r.read()


async def test_three_nodes_share_content(tmp_path: Path, netns: str) -> None:
    import random

    data = random.Random(41).randbytes(SIZE)
    with nodes(tmp_path, netns, 3) as (a, b, c):
        ci = await publish(a, data)
        assert await read_all(b, ci) == data
        got_b = await counters(b)
        assert got_b["bytes_from_peers"] == SIZE and got_b["bytes_from_origin"] == 0
        served_a = (await counters(a))["bytes_served_to_peers"]
        assert served_a >= SIZE
        assert await read_all(c, ci) == data
        got_c = await counters(c)
        assert got_c["bytes_from_peers"] == SIZE
        served_a2 = (await counters(a))["bytes_served_to_peers"] - served_a
        served_b = (await counters(b))["bytes_served_to_peers"]
        # C took blocks from both A and B: B serves on what it got from A.
        assert served_a2 > 0 and served_b > 0
        assert served_a2 + served_b >= SIZE
        # Per peer: C knows what it got from each; A knows what it served to each.
        async with c.session() as api, api.get("/v1/peers") as r:
            seen_by_c = {p["address"]: p for p in (await r.json())["peers"]}
        got = {a: seen_by_c[a]["bytes_from"] for a in ("127.0.0.1:8080", "127.0.0.2:8080")}
        # At least SIZE: a block asked of both (a hedge) and sent by both counts for both.
        assert all(n > 0 for n in got.values()) and sum(got.values()) >= SIZE
        assert all(seen_by_c[a]["last_seen"] > 0 and not seen_by_c[a]["banned"] for a in got)
        async with a.session() as api, api.get("/v1/peers") as r:
            seen_by_a = {p["address"]: p for p in (await r.json())["peers"]}
        to_b = next(p["bytes_to"] for ad, p in seen_by_a.items() if ad.startswith("127.0.0.2"))
        to_c = next(p["bytes_to"] for ad, p in seen_by_a.items() if ad.startswith("127.0.0.3"))
        assert to_b >= SIZE and to_c == got["127.0.0.1:8080"]


async def test_timeout_zero_sends_no_packet(tmp_path: Path, netns: str) -> None:
    data = bytes(range(256)) * 1024
    with nodes(tmp_path, netns, 2) as (a, b):
        ci = await publish(a, data)
        before = await counters(b)
        async with b.session() as api:
            async with api.post("/v1/contents", data=ci) as r:
                h = (await r.json())["handle"]
            async with api.post(f"/v1/contents/{h}/stream-read", params={"timeout_ms": "0"}) as r:
                err = await r.json()
        assert (r.status, err["error"], err["offset"], err["length"]) == (
            424,
            "MISSING_DATA",
            0,
            len(data),
        )
        after = await counters(b)
        assert after["probes_sent"] == before["probes_sent"]
        assert after["discovery_attempts"] == before["discovery_attempts"]
        assert (await counters(a))["probes_received"] == 0


async def test_missing_data_when_no_peer_has_it(tmp_path: Path, netns: str) -> None:
    data = bytes(200) + bytes(range(100)) * 3000
    with nodes(tmp_path, netns, 2) as (a, b):
        ci = await publish(a, data)
        # Publications keep their blocks unless the flush asks for them too.
        async with (
            a.session() as api,
            api.delete("/v1/cache", params={"publications": "true"}) as r,
        ):
            assert r.status == 200
        async with b.session() as api:
            async with api.post("/v1/contents", data=ci) as r:
                h = (await r.json())["handle"]
            async with api.post(f"/v1/contents/{h}/stream-read") as r:
                err = await r.json()
        assert (err["error"], err["offset"], err["length"]) == ("MISSING_DATA", 0, len(data))
        stats = await counters(b)
        assert stats["probes_sent"] >= 1 and stats["discovery_successes"] == 0


def corrupt_cache_files(d: DaemonProcess) -> int:
    """Flip a byte in every block of every segment file of node ``d``'s cache."""
    flipped = 0
    for path in (d.root / f"{d.log.stem}-cache").rglob("*.seg"):  # type: ignore[union-attr]
        with path.open("r+b") as f:
            size = path.stat().st_size
            for pos in range(100, size, BLOCK):
                f.seek(pos)
                byte = f.read(1)
                f.seek(pos)
                f.write(bytes([byte[0] ^ 0xFF]))
                flipped += 1
    return flipped


async def test_corrupt_peer_is_banned_and_data_arrives_intact(tmp_path: Path, netns: str) -> None:
    import random

    data = random.Random(43).randbytes(SIZE)
    # A daemon never serves a block that fails its hash: these nodes are patched to lie (and
    # their background scrub, which would drop the bad blocks first, is off).
    lying = {"LYING_PEER": "1", "PYTHONPATH": str(LYING)}
    with nodes(tmp_path, netns, 3, PEERDISTD_CACHE_SCRUB_BYTES_PER_SECOND="0", **lying) as (
        a,
        b,
        c,
    ):
        ci = await publish(a, data)
        assert await read_all(b, ci) == data
        assert corrupt_cache_files(a) > 0  # A now serves bad bytes for every block
        assert await read_all(c, ci) == data
        stats = await counters(c)
        assert stats["bad_blocks"] >= 1
        assert stats["banned_peers"] == 1
        assert stats["bytes_from_peers"] == SIZE


async def test_peer_killed_mid_transfer_costs_a_retry(tmp_path: Path, netns: str) -> None:
    import random

    data = random.Random(44).randbytes(SIZE)
    with nodes(tmp_path, netns, 3) as (a, b, c):
        ci = await publish(a, data)
        assert await read_all(b, ci) == data
        served_to_b = (await counters(a))["bytes_served_to_peers"]
        out = b""
        async with c.session() as api:
            async with api.post("/v1/contents", data=ci) as r:
                h = (await r.json())["handle"]
            while len(out) < 4 * BLOCK:  # blocks 0-3 alternate between A and B
                async with api.post(
                    f"/v1/contents/{h}/stream-read", params={"max": str(8 * BLOCK)}
                ) as r:
                    assert r.status == 200
                    out += await r.read()
            # C was taking blocks from A (blocks are spread over both holders) ...
            assert (await counters(a))["bytes_served_to_peers"] > served_to_b
            a.stop(signal.SIGKILL)  # ... when A dies in the middle of the content
            while True:
                async with api.post(
                    f"/v1/contents/{h}/stream-read", params={"max": str(1 << 20)}
                ) as r:
                    if r.status == 416:
                        break
                    assert r.status == 200, await r.text()
                    out += await r.read()
        assert out == data
        assert (await counters(c))["bytes_from_origin"] == 0


async def test_zeroconf_nodes_see_each_other(tmp_path: Path, netns: str) -> None:
    with nodes(tmp_path, netns, 2, PEERDISTD_PEERS_ZEROCONF="true") as (a, b):
        async with a.session() as api:
            async with b.session() as api_b, api_b.get("/v1/status") as r:
                b_id = (await r.json())["node_id"]
            deadline = asyncio.get_running_loop().time() + 15
            peers: list[dict] = []
            while asyncio.get_running_loop().time() < deadline:
                # The announcement travels by multicast; ask until it has been seen.
                async with api.get("/v1/peers") as r:
                    peers = (await r.json())["peers"]
                if peers:
                    break
                await asyncio.sleep(0.2)
        assert [(p["node_id"], p["address"], p["source"]) for p in peers] == [
            (b_id, "127.0.0.2:8080", "zeroconf")
        ]
        assert (await counters(a))["peers_known"] == 1
