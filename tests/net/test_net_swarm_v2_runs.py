"""Runs across V2 segments against real retrieval servers on loopback (net.swarm_runs).

V2 content information makes every segment one block of at most 128 KiB, so consecutive
segments of one content go as one RUN_PATH exchange, each block decrypted with its own
segment's key and verified against its own HoD. A forged block inside such a run bans its
peer; a server without the extension (404 there, as Windows answers) serves V2 block by
block on MAGIC_PATH.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import cast

from peerdistd.net.discovery import Discovery, PeerHit
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.swarm import Swarm
from peerdistd.proto import pccrr
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm, Segment
from tests.net.test_net_swarm_runs import CountingServer, standard_peer

V2 = HashAlgorithm.TRUNCATED_SHA512
SIZES = [131072, 98304, 120000, 131072, 77777, 131072, 131072, 100000, 131072, 65536]
DATA = [os.urandom(n) for n in SIZES]


def _segments() -> list[Segment]:
    out, offset = [], 0
    for n, data in enumerate(DATA):
        hod = hashlib.sha512(data).digest()[:32]
        out.append(
            Segment(
                index=n,
                offset=offset,
                length=len(data),
                block_size=len(data),
                hod=hod,
                secret=hashlib.sha256(b"Kp %d" % n).digest(),  # a key of its own each
                segment_id=hashlib.sha256(b"id %d" % n).digest(),
                block_hashes=(hod,),
            )
        )
        offset += len(data)
    return out


SEGMENTS = _segments()
REFS = [BlockRef(s, 0, s.offset, s.offset + s.length, s.hod) for s in SEGMENTS]


class V2Source:
    """Every segment of SEGMENTS as block 0, with ``blocks`` standing in for their bytes."""

    def __init__(self, blocks: Sequence[bytes] = DATA, missing: Sequence[int] = ()) -> None:
        self.by_id = {
            s.segment_id: (s.secret, blocks[n]) for n, s in enumerate(SEGMENTS) if n not in missing
        }

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        got = self.by_id.get(segment_id)
        return None if got is None else got[0]

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return [0] if segment_id in self.by_id else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        got = self.by_id.get(segment_id)
        return got[1] if got is not None and index == 0 else None


class FakeDiscovery:
    def __init__(self, peers: Sequence[str]) -> None:
        self.peers = peers
        self.rounds = 0

    async def find(
        self, segment_ids: Sequence[bytes], *, window: float = 0.3, version: int = 1
    ) -> dict[bytes, list[PeerHit]]:
        self.rounds += 1
        return {sid: [PeerHit(p, 1) for p in self.peers] for sid in segment_ids}


@asynccontextmanager
async def swarm_of(*peers: str) -> AsyncIterator[Swarm]:
    async with RetrievalClient(connections_per_peer=2) as client:
        swarm = Swarm(cast(Discovery, FakeDiscovery(peers)), client, window=0.0)
        try:
            yield swarm
        finally:
            await swarm.aclose()


async def test_consecutive_v2_segments_come_in_one_exchange_byte_exact() -> None:
    async with AsyncExitStack() as stack:
        server = CountingServer(V2Source())  # type: ignore[arg-type]
        await stack.enter_async_context(server)
        swarm = await stack.enter_async_context(swarm_of(f"127.0.0.1:{server.port}"))
        await swarm.locate([s.segment_id for s in SEGMENTS], timeout=1)
        got = await swarm.fetch_run(REFS[:8], V2, timeout=5)  # 1,000,849 bytes
        assert got == DATA[:8]
        assert server.paths == [pccrr.RUN_PATH.encode()]
        # What it delivered leads the content's trail: it holds each of those segments.
        assert all(swarm.directory.holders(s.segment_id) for s in SEGMENTS[:8])


async def test_a_forged_segment_inside_a_run_bans_its_peer() -> None:
    forged = list(DATA)
    forged[5] = os.urandom(len(DATA[5]))
    async with AsyncExitStack() as stack:
        bad = CountingServer(V2Source(forged))  # type: ignore[arg-type]
        good = CountingServer(V2Source())  # type: ignore[arg-type]
        await stack.enter_async_context(bad)
        await stack.enter_async_context(good)
        bad_peer, good_peer = f"127.0.0.1:{bad.port}", f"127.0.0.1:{good.port}"
        async with swarm_of(bad_peer, good_peer) as swarm:  # the run goes to bad_peer first
            await swarm.locate([s.segment_id for s in SEGMENTS], timeout=1)
            got = await swarm.fetch_run(REFS[:8], V2, timeout=5)
            assert got == DATA[:8]  # the forged one came from the good peer
            assert swarm.banned(bad_peer) and not swarm.banned(good_peer)
            assert swarm.stats.bad_blocks == 1
            assert bad.paths == [pccrr.RUN_PATH.encode()]


async def test_a_segment_a_run_lacks_comes_from_another_holder() -> None:
    async with AsyncExitStack() as stack:
        part = await stack.enter_async_context(CountingServer(V2Source(missing=[2])))  # type: ignore[arg-type]
        full = await stack.enter_async_context(CountingServer(V2Source()))  # type: ignore[arg-type]
        part_peer, full_peer = f"127.0.0.1:{part.port}", f"127.0.0.1:{full.port}"
        async with swarm_of(part_peer, full_peer) as swarm:
            await swarm.locate([s.segment_id for s in SEGMENTS], timeout=1)
            assert await swarm.fetch_run(REFS[:6], V2, timeout=5) == DATA[:6]
            assert not swarm.banned(part_peer)
            assert not swarm.directory.may_hold(SEGMENTS[2].segment_id, part_peer, 0)


async def test_a_windows_like_peer_serves_v2_block_by_block() -> None:
    async with standard_peer(V2Source()) as (peer, paths), swarm_of(peer) as swarm:  # type: ignore[arg-type]
        await swarm.locate([s.segment_id for s in SEGMENTS], timeout=1)
        assert await swarm.fetch_run(REFS[:6], V2, timeout=5) == DATA[:6]
        assert not swarm.banned(peer) and peer in swarm.single_peers
        paths.clear()
        assert await swarm.fetch_run(REFS[6:], V2, timeout=5) == DATA[6:]
    assert paths.count(pccrr.RUN_PATH) == 0
    # One request per segment (standard_peer notes each request twice: on its way in and
    # in its handler).
    assert paths.count(pccrr.MAGIC_PATH) == 2 * (len(REFS) - 6)
