"""Single flight across the branch with real daemons on 127.0.0.x in a network namespace of
the test's own (docs/single-flight.md): nodes that want the same content at once fetch each
piece from the origin about once, a claimant that dies or freezes is taken over, and no read
waits past its timeout because of a claim.

The origin is an aiohttp server of the test on loopback that counts the bytes it sends; the
fetch loops run in the test (they are clients of the daemons' API sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from peerdistd.api.client import PeerDistClient
from peerdistd.errors import MissingData, Timeout
from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrc import ContentInformation
from peerdistd.proto.pccrd import GROUP_V4, PORT, Probe, new_message_id, parse_probe_match
from peerdistd.proto.pccrr import Blk, BlockRange, CryptoAlgo, GetBlks
from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon
from tests.peers.test_peers_conformance import in_netns, post
from tests.peers.test_peers_loopback import counters, nodes

MIB = 1 << 20


@dataclass
class Origin:
    data: bytes
    served: int = 0
    requests: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    url: str = ""


@contextlib.asynccontextmanager
async def origin(data: bytes) -> AsyncIterator[Origin]:
    """A loopback origin serving ``data`` with Range, counting bytes sent."""
    state = Origin(data)

    async def get(request: web.Request) -> web.StreamResponse:
        rng = request.http_range
        start, stop = rng.start or 0, rng.stop if rng.stop is not None else len(data)
        state.requests += 1
        state.served += stop - start
        state.ranges.append((start, stop))
        return web.Response(
            status=206,
            body=data[start:stop],
            headers={"Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"},
        )

    app = web.Application()
    app.router.add_get("/f", get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/f"
    try:
        yield state
    finally:
        await runner.cleanup()


def content_information(tmp_path: Path, data: bytes, version: int) -> bytes:
    """Made by a daemon without peers (it holds the content, so it is stopped after)."""

    async def run(d: DaemonProcess) -> bytes:
        async with d.session() as api:
            async with api.post(
                "/v1/publications",
                params={"id": "c", "version": str(version)},
                data=io.BytesIO(data),
            ) as r:
                assert r.status == 201, await r.text()
            async with api.get("/v1/publications/c/content-information") as r:
                return await r.read()

    d = start_daemon(tmp_path / "publisher", name="publisher")
    try:
        return asyncio.run(run(d))
    finally:
        d.stop()
        d.notify.close()


async def fetch(d: DaemonProcess, ci: bytes, url: str, workers: int | None = None) -> bytes:
    out = io.BytesIO()
    async with PeerDistClient(d.socket) as client:
        if workers is None:
            await client.fetch_to(ci, url, out)
        else:
            await client.fetch_to(ci, url, out, workers=workers)
    return out.getvalue()


def test_ten_nodes_at_once_fetch_about_one_copy(tmp_path: Path, netns: str) -> None:
    data = random.Random(91).randbytes(6 * MIB + 12345)
    ci = content_information(tmp_path, data, 1)
    with nodes(tmp_path, netns, 10) as ds:

        async def run() -> None:
            async with origin(data) as o:
                got = await asyncio.gather(*(fetch(d, ci, o.url) for d in ds))
                assert all(g == data for g in got)
                # Each piece went over the WAN about once (a lost datagram may cost a piece).
                stats = [await counters(d) for d in ds]
                claims = {
                    k: [int(s.get(k, 0)) for s in stats]
                    for k in ("claims_won", "claims_lost", "claims_released", "claims_doubled")
                }
                twice = sorted(r for r in set(o.ranges) if o.ranges.count(r) > 1)
                assert o.served <= 1.2 * len(data), (claims, o.served, twice)
                from_peers = [s["bytes_from_peers"] for s in stats]
                assert sum(from_peers) >= 8 * len(data)

        asyncio.run(run())


def test_v2_nodes_at_once_fetch_about_one_copy(tmp_path: Path, netns: str) -> None:
    data = random.Random(92).randbytes(4 * MIB + 777)
    ci = content_information(tmp_path, data, 2)
    with nodes(tmp_path, netns, 5) as ds:

        async def run() -> None:
            async with origin(data) as o:
                got = await asyncio.gather(*(fetch(d, ci, o.url) for d in ds))
                assert all(g == data for g in got)
                assert o.served <= 1.2 * len(data), (o.served, len(data), sorted(o.ranges))

        asyncio.run(run())


def test_claimant_killed_mid_piece_is_taken_over(tmp_path: Path, netns: str) -> None:
    data = random.Random(93).randbytes(4 * MIB)
    ci = content_information(tmp_path, data, 1)
    with nodes(tmp_path, netns, 4) as (a, *rest):

        async def run() -> None:
            async with origin(data) as o, PeerDistClient(a.socket) as client:
                handle = await client.open_content(ci)
                # A claims the first piece (the daemon says: fetch it from the origin) ...
                try:
                    await handle.block_read(0, MIB)
                    raise AssertionError("expected MISSING_DATA")
                except MissingData as gap:
                    assert (gap.offset, gap.length) == (0, MIB)
                # ... takes half of it, then dies.
                await handle.add_data(0, data[: MIB // 2])
                o.served += MIB // 2
                a.stop(signal.SIGKILL)
                got = await asyncio.gather(*(fetch(d, ci, o.url) for d in rest))
                assert all(g == data for g in got)
                assert o.served <= 1.2 * len(data), (o.served, len(data), sorted(o.ranges))

        asyncio.run(run())


def test_stalled_claimant_never_holds_a_read_past_its_timeout(tmp_path: Path, netns: str) -> None:
    data = random.Random(94).randbytes(2 * MIB)
    ci = content_information(tmp_path, data, 1)
    ttl_ms = 1000
    with nodes(tmp_path, netns, 2, PEERDISTD_PEERS_CLAIM_TTL_MS=str(ttl_ms)) as (a, b):

        async def run() -> None:
            async with PeerDistClient(a.socket) as ca, PeerDistClient(b.socket) as cb:
                ha = await ca.open_content(ci)
                try:
                    await ha.block_read(0, MIB)
                    raise AssertionError("expected MISSING_DATA")
                except MissingData:
                    pass
                os.kill(a.proc.pid, signal.SIGSTOP)  # the claimant freezes
                hb = await cb.open_content(ci)
                # A read shorter than the claim's life ends at its own timeout, not later.
                started = time.monotonic()
                try:
                    await hb.block_read(0, MIB, timeout_ms=300)
                    raise AssertionError("expected TIMEOUT")
                except Timeout as gap:
                    assert (gap.offset, gap.length) == (0, MIB)
                assert time.monotonic() - started < ttl_ms / 1000
                # A longer read outlives the frozen claim and is told to fetch the piece.
                try:
                    await hb.block_read(0, MIB, timeout_ms=5000)
                    raise AssertionError("expected MISSING_DATA")
                except MissingData as gap:
                    assert (gap.offset, gap.length) == (0, MIB)
                os.kill(a.proc.pid, signal.SIGCONT)

        asyncio.run(run())


def test_a_no_claim_read_of_a_free_piece_claims_nothing(tmp_path: Path, netns: str) -> None:
    """A peer reader's read (the no_claim flag) of a piece nobody fetches is answered
    MISSING_DATA for that piece and leaves it free: the next node's ordinary read claims it,
    and the first node's next no_claim read waits for that claim like any waiter."""
    data = random.Random(95).randbytes(2 * MIB)
    ci = content_information(tmp_path, data, 1)
    with nodes(tmp_path, netns, 2) as (a, b):

        async def run() -> None:
            async with PeerDistClient(a.socket) as ca, PeerDistClient(b.socket) as cb:
                ha = await ca.open_content(ci)
                try:
                    await ha.block_read(MIB, MIB, timeout_ms=2000, flags=("no_claim",))
                    raise AssertionError("expected MISSING_DATA")
                except MissingData as gap:
                    assert (gap.offset, gap.length) == (MIB, MIB)
                hb = await cb.open_content(ci)
                try:  # b's own read claims it: a made no claim
                    await hb.block_read(MIB, MIB, timeout_ms=2000)
                    raise AssertionError("expected MISSING_DATA")
                except MissingData as gap:
                    assert (gap.offset, gap.length) == (MIB, MIB)
                # b's claim stands: a's no_claim read waits for it, to its own deadline.
                started = time.monotonic()
                try:
                    await ha.block_read(MIB, MIB, timeout_ms=300, flags=("no_claim",))
                    raise AssertionError("expected TIMEOUT")
                except Timeout as gap:
                    assert (gap.offset, gap.length) == (MIB, MIB)
                assert time.monotonic() - started < 1.0
            assert (await counters(a)).get("claims_won", 0) == 0
            assert (await counters(b)).get("claims_won", 0) == 1

        asyncio.run(run())


def test_a_piece_another_node_finishes_is_fetched_for_a_handle_read_whole(
    tmp_path: Path, netns: str
) -> None:
    """B has a handle on each of two contents, one opened ``whole``. A claims the first piece
    of each, adds it from the origin and says DONE: B fetches the piece of the content read
    whole into its cache before any read asks, and leaves the other alone."""
    data = {name: random.Random(seed).randbytes(2 * MIB) for name, seed in (("x", 96), ("y", 97))}
    infos = {name: content_information(tmp_path / name, d, 1) for name, d in data.items()}
    with nodes(tmp_path, netns, 2) as (a, b):

        async def claim_and_add(client: PeerDistClient, name: str) -> None:
            h = await client.open_content(infos[name])
            try:
                await h.block_read(0, MIB)
                raise AssertionError("expected MISSING_DATA")
            except MissingData as gap:
                assert (gap.offset, gap.length) == (0, MIB)
            await h.add_data(0, data[name][:MIB])  # whole: A sends DONE

        async def run() -> None:
            async with PeerDistClient(a.socket) as ca, PeerDistClient(b.socket) as cb:
                hx = await cb.open_content(infos["x"])  # read as it goes
                hy = await cb.open_content(infos["y"], whole=True)
                await claim_and_add(ca, "x")
                await claim_and_add(ca, "y")  # its DONE comes after x's
                deadline = time.monotonic() + 10
                while await hy.available() < MIB:  # fetched without a read
                    assert time.monotonic() < deadline, "y's first piece never came"
                    await asyncio.sleep(0.02)
                assert await hx.available() == 0  # x's DONE came first and was let be
                got = await hy.block_read(0, MIB, timeout_ms=0)  # local only
                assert got.data == data["y"][:MIB] and got.from_peers == MIB

        asyncio.run(run())


def test_ipxe_shaped_client_gets_blocks_from_a_claimant_mid_piece(
    tmp_path: Path, netns: str
) -> None:
    """iPXE knows nothing of claims: a PCCRD probe and a GETBLKS to a node that is fetching a
    piece find the blocks it holds so far (BlockCount = blocks held), and get them."""
    data = random.Random(95).randbytes(2 * MIB)
    ci = content_information(tmp_path, data, 1)
    seg = ContentInformation.parse(ci).segments[0]
    with nodes(tmp_path, netns, 1) as (a,):

        async def claim_half() -> None:
            async with PeerDistClient(a.socket) as client:
                handle = await client.open_content(ci)
                try:
                    await handle.block_read(0, MIB)
                    raise AssertionError("expected MISSING_DATA")
                except MissingData as gap:
                    assert (gap.offset, gap.length) == (0, MIB)
                await handle.add_data(0, data[: 5 * BLOCK])  # 5 of the piece's 16 blocks
                # The handle stays open (its claim with it) while iPXE asks.
                counts = in_netns(netns, lambda: probe(seg.segment_id))
                assert counts == {seg.segment_id: 5}
                request = GetBlks(seg.segment_id, (BlockRange(3, 1),), crypto=CryptoAlgo.AES_128)
                status, answer = post(netns, pccrr.serialize(request))
                msg = pccrr.parse_response(answer)
                assert status == 200 and isinstance(msg, Blk) and msg.block_index == 3
                plain = blockcrypto.decrypt(msg.crypto, seg.secret, msg.iv, msg.block, BLOCK)
                assert plain == data[3 * BLOCK : 4 * BLOCK]

        asyncio.run(claim_half())


def probe(segment_id: bytes) -> dict[bytes, int]:
    """One PCCRD V1 probe from 127.0.0.99 to the group; the counts of the first ProbeMatch."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.99", 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.99"))
        sock.settimeout(5)
        probe = Probe(new_message_id(), (segment_id,), 1)
        sock.sendto(probe.to_bytes(), (GROUP_V4, PORT))
        data, _ = sock.recvfrom(65536)
        return parse_probe_match(data, {probe.message_id: probe.segment_ids}).counts
    finally:
        sock.close()
