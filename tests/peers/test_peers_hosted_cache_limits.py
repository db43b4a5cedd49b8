"""Hosted cache mode's limits and bookkeeping with real daemons in a namespace of the test's
own (issue 10): the upload limit holds, a segment completed after a restart is still offered,
and the hosted_cache_* counters reach Prometheus.

The same branch as test_peers_hosted_cache: a hosted cache on 127.0.0.1 (PCCRR on :8080,
v1.0 offers over HTTPS on :8443) and nodes on 127.0.0.2 and up.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdistd.net.types import BUSY_HEADER
from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrc import ContentInformation, Segment
from peerdistd.proto.pccrr import Blk, BlockRange, GetBlks
from tests.content import BLOCK as BLOCK_SIZE
from tests.harness import DaemonProcess, start_daemon
from tests.netns import enter_netns, run_in_thread
from tests.peers.test_peers_hosted_cache import (
    DATA,
    SIZE,
    Branch,
    content_information,
    counter,
    download_from_origin,
    until,
)
from tests.peers.test_peers_loopback import counters
from tests.service.test_service_daemon_metrics import scrape

UPLOAD_LIMIT = 2


class MeteredBranch(Branch):
    """The branch of test_peers_hosted_cache, each daemon with metrics on its address:9595."""

    def _start(self, name: str, address: str, **env: str) -> DaemonProcess:
        d = start_daemon(
            self.tmp_path,
            "--listen",
            f"{address}:8080",
            name=name,
            netns=self.netns,
            env={"PEERDISTD_PEERS_ZEROCONF": "false", **env},
            metrics=f"{address}:9595",
        )
        self.started.append(d)
        return d


@pytest.fixture
def branch(tmp_path: Path, netns: str) -> Iterator[MeteredBranch]:
    b = MeteredBranch(tmp_path, netns)
    try:
        yield b
    finally:
        b.close()


def metrics(branch: Branch, address: str) -> dict[str, float]:
    return scrape(branch.netns, f"http://{address}:9595/metrics")


async def add(d: DaemonProcess, ci: bytes, start: int, end: int) -> None:
    """The application adds DATA[start:end], fetched from the origin (a fresh handle)."""
    async with d.session() as api:
        async with api.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        piece = io.BytesIO(DATA[start:end])
        async with api.put(
            f"/v1/contents/{h}/data", params={"offset": str(start)}, data=piece
        ) as r:
            assert (r.status, (await r.json())["verified"]) == (200, end - start)
        async with api.delete(f"/v1/contents/{h}") as r:
            assert r.status == 204


async def test_a_segment_completed_after_a_restart_is_offered(branch: MeteredBranch) -> None:
    """Blocks 0..15 arrive, the node restarts, the rest arrive: the segment is offered (the
    block hashes from before the restart come from the index), and the counters of both
    roles move in /metrics as in /v1/status."""
    hc = branch.hosted_cache()
    ci = content_information(1)
    info = ContentInformation.parse(ci)
    blocks = len(list(info.blocks()))
    assert len(info.segments) == 1 and blocks > 16  # one V1 segment (32 MiB at most)
    a = branch.node(2)
    await add(a, ci, 0, 16 * BLOCK_SIZE)
    assert a.stop() == 0  # a clean restart: the 16 blocks are durable, their hashes indexed
    a = branch.node(2)
    before_hc, before_a = metrics(branch, "127.0.0.1"), metrics(branch, "127.0.0.2")
    assert before_hc["peerdist_hosted_cache_blocks_pulled_total"] == 0
    assert before_a["peerdist_hosted_cache_segments_offered_total"] == 0
    await add(a, ci, 16 * BLOCK_SIZE, SIZE)

    async def offered() -> bool:
        return await counter(a, "hosted_cache_segments_offered") == 1

    async def pulled() -> bool:
        return await counter(hc, "hosted_cache_blocks_pulled") == blocks

    await until(offered, "the segment completed after the restart to be offered")
    await until(pulled, "the hosted cache to pull every block")
    after_hc, after_a = metrics(branch, "127.0.0.1"), metrics(branch, "127.0.0.2")
    status_hc, status_a = await counters(hc), await counters(a)
    assert after_hc["peerdist_hosted_cache_blocks_pulled_total"] == blocks
    assert after_hc["peerdist_hosted_cache_bytes_pulled_total"] == SIZE
    assert after_hc["peerdist_hosted_cache_offers_total"] >= 1
    assert after_hc["peerdist_hosted_cache_bad_blocks_total"] == 0
    assert after_a["peerdist_hosted_cache_segments_offered_total"] == 1
    assert after_a["peerdist_bytes_served_to_peers_total"] == SIZE  # all pulled from A
    for samples, status in ((after_hc, status_hc), (after_a, status_a)):
        for key, value in status.items():
            if key.startswith("hosted_cache_"):
                assert samples[f"peerdist_{key}_total"] == value, key


def _request(body: bytes, *, expect_continue: bool = False) -> bytes:
    head = (
        f"POST {pccrr.MAGIC_PATH} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        f"Content-Length: {len(body)}\r\n"
    )
    if expect_continue:
        return (head + "Expect: 100-continue\r\n\r\n").encode()
    return (head + "\r\n").encode() + body


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head, await reader.readexactly(length)


def _served_block(head: bytes, body: bytes, segment: Segment, index: int) -> bool:
    """True for the verified block ``index``; False for the busy answer; else fails."""
    msg = pccrr.parse_response(body)
    assert isinstance(msg, Blk) and msg.block_index == index
    if not msg.block:
        assert f"{BUSY_HEADER}: 1".encode().lower() in head.lower(), head
        return False
    length = min(BLOCK_SIZE, segment.length - index * BLOCK_SIZE)
    plain = blockcrypto.decrypt(msg.crypto, segment.secret, msg.iv, msg.block, length)
    assert hashlib.sha256(plain).digest() == segment.block_hashes[index]
    return True


async def test_the_upload_limit_holds(branch: MeteredBranch) -> None:
    """hosted_cache.upload_limit (not peers.upload_limit) caps the PCCRR uploads served at
    once: while two requests hold both slots, every other client gets the busy answer; a
    freed slot serves the next request."""
    hc = branch.hosted_cache(
        PEERDISTD_HOSTED_CACHE_UPLOAD_LIMIT=str(UPLOAD_LIMIT), PEERDISTD_PEERS_UPLOAD_LIMIT="64"
    )
    ci = content_information(1)
    segment = ContentInformation.parse(ci).segments[0]
    blocks = len(segment.block_hashes)
    a = branch.node(2)
    await download_from_origin(a, ci)

    async def pulled() -> bool:
        return await counter(hc, "hosted_cache_blocks_pulled") == blocks

    await until(pulled, "the hosted cache to pull every block")
    a.stop()  # nothing but this test's clients talks to the hosted cache now

    def ask(index: int) -> bytes:
        return pccrr.serialize(GetBlks(segment.segment_id, (BlockRange(index, 1),)))

    async def one_request(index: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", 8080)
        try:
            writer.write(_request(ask(index)))
            return _served_block(*await _response(reader), segment, index)
        finally:
            writer.close()

    async def scenario() -> tuple[list[bool], list[bool]]:
        enter_netns(branch.netns)
        held = []
        try:
            # Each request's head takes an upload slot; the 100 Continue says it was taken,
            # and the slot stays taken until the body arrives and the answer is written.
            for index in range(UPLOAD_LIMIT):
                reader, writer = await asyncio.open_connection("127.0.0.1", 8080)
                held.append((reader, writer, index))
                writer.write(_request(ask(index), expect_continue=True))
                assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            while_full = [await one_request(i) for i in range(UPLOAD_LIMIT, UPLOAD_LIMIT + 4)]
            served = []
            for reader, writer, index in held:  # each held request finishes, then one more
                writer.write(ask(index))
                served.append(_served_block(*await _response(reader), segment, index))
                served.append(await one_request(index + UPLOAD_LIMIT))
            return while_full, served
        finally:
            for _, writer, _ in held:
                writer.close()

    while_full, served = run_in_thread(scenario)
    assert while_full == [False] * 4  # all busy: never more than the limit served at once
    assert served == [True] * (2 * UPLOAD_LIMIT)
