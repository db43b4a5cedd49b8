"""Reads that are pending on a peer, against real daemons: close aborts them
(OPERATION_ABORTED) and a client that goes away gets its handle reclaimed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import signal
import time
from pathlib import Path

import aiohttp

from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon

SIZE = 200 * BLOCK  # more than the read-ahead of the first read (64 blocks)
FAR, FAR_LENGTH = 150 * BLOCK, 10 * BLOCK  # beyond that read-ahead


async def _frozen_holder_setup(
    tmp_path: Path, netns: str, ranged: list[bytes] | None = None
) -> tuple[DaemonProcess, DaemonProcess, aiohttp.ClientSession, str]:
    a = start_daemon(tmp_path, "--listen", "127.0.0.1:8080", name="a", netns=netns,
                     env={"PEERDISTD_PEERS_ZEROCONF": "false"})  # fmt: skip
    b = start_daemon(
        tmp_path, "--listen", "127.0.0.2:8080", name="b", netns=netns,
        # A frozen holder, asked with a long request timer and no floor rate: reads pend.
        env={"PEERDISTD_PEERS_ZEROCONF": "false", "PEERDISTD_PEERS_REQUEST_TIMEOUT_MS": "60000",
             "PEERDISTD_PEERS_MIN_TRANSFER_RATE": "0"},
    )  # fmt: skip
    data = random.Random(51).randbytes(SIZE)
    ranged = [] if ranged is None else ranged
    async with a.session() as api:
        async with api.post("/v1/publications", params={"id": "x"}, data=io.BytesIO(data)) as r:
            assert r.status == 201
        async with api.get("/v1/publications/x/content-information") as r:
            ci = await r.read()
        # Content information for a range far past the first read's read-ahead: reads in it
        # can only be served by A (same segment, so B's discovery answer covers it).
        span = {"offset": str(FAR), "length": str(FAR_LENGTH)}
        async with api.get("/v1/publications/x/content-information", params=span) as r:
            ranged[:] = [await r.read(), data]
    session = b.session()
    async with session.post("/v1/contents", data=ci) as r:
        h = (await r.json())["handle"]
    # One block through A, so B knows A holds the segment; then A stops answering.
    async with session.post(
        f"/v1/contents/{h}/block-read", params={"offset": "0", "max": "1"}
    ) as r:
        assert r.status == 200
    os.kill(a.proc.pid, signal.SIGSTOP)
    return a, b, session, h


def _teardown(a: DaemonProcess, b: DaemonProcess) -> None:
    os.kill(a.proc.pid, signal.SIGCONT)
    for d in (a, b):
        d.stop()
        d.notify.close()


async def test_close_aborts_a_read_pending_on_a_peer(tmp_path: Path, netns: str) -> None:
    a, b, session, h = await _frozen_holder_setup(tmp_path, netns)
    try:
        async with (
            b.session() as events_api,
            events_api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=60)) as events,
        ):
            read = asyncio.ensure_future(
                session.post(
                    f"/v1/contents/{h}/block-read",
                    params={"offset": str(150 * BLOCK), "timeout_ms": "60000"},
                )
            )
            # The read has started once its START_COMPLETE arrives.
            async for raw in events.content:
                if raw.startswith(b"event: START_COMPLETE"):
                    break
            async with session.delete(f"/v1/contents/{h}") as r:
                assert r.status == 204
            resp = await read
            body = await resp.json()
            assert (resp.status, body["error"]) == (410, "OPERATION_ABORTED")
    finally:
        await session.close()
        _teardown(a, b)


async def test_client_that_goes_away_gets_its_handle_reclaimed(tmp_path: Path, netns: str) -> None:
    a, b, session, h = await _frozen_holder_setup(tmp_path, netns)
    try:
        async with (
            b.session() as events_api,
            events_api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=60)) as events,
        ):
            other = b.session()
            read = asyncio.ensure_future(
                other.post(
                    f"/v1/contents/{h}/block-read",
                    params={"offset": str(150 * BLOCK), "timeout_ms": "60000"},
                )
            )
            async for raw in events.content:
                if raw.startswith(b"event: START_COMPLETE"):
                    break
            read.cancel()  # the client goes away with its read pending
            with contextlib.suppress(asyncio.CancelledError):
                await read
            await other.close()
            async for raw in events.content:  # the daemon ends the read when it notices
                if raw.startswith(b"event: SHUTDOWN_COMPLETE"):
                    break
        async with session.post(f"/v1/contents/{h}/stream-read", params={"max": "0"}) as r:
            assert r.status == 404 and (await r.json())["error"] == "INVALID_HANDLE"
    finally:
        await session.close()
        _teardown(a, b)


async def _started(events: aiohttp.ClientResponse) -> None:
    async for raw in events.content:
        if raw.startswith(b"event: START_COMPLETE"):
            return


async def test_queued_stream_reads_are_served_first_in_first_out(
    tmp_path: Path, netns: str
) -> None:
    """A stream read queued behind one pending on a peer waits for it, then takes the next
    range (DESIGN.md: reads on one handle are served first-in first-out)."""
    ranged: list[bytes] = []
    a, b, session, _ = await _frozen_holder_setup(tmp_path, netns, ranged)
    ci, data = ranged
    try:
        async with session.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        async with (
            b.session() as events_api,
            events_api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=60)) as events,
        ):
            params = {"max": str(BLOCK), "timeout_ms": "60000"}

            async def stream_read() -> tuple[int, bytes]:
                async with session.post(f"/v1/contents/{h}/stream-read", params=params) as r:
                    assert r.status == 200, await r.text()
                    return int(r.headers["PeerDist-Offset"]), await r.read()

            first = asyncio.ensure_future(stream_read())
            await _started(events)  # the first read is pending on the frozen peer
            queued = [asyncio.ensure_future(stream_read()) for _ in range(2)]
            os.kill(a.proc.pid, signal.SIGCONT)
            offset, body = await first
            assert offset == FAR and body == data[FAR : FAR + len(body)]
            pos = FAR + len(body)
            for offset, body in sorted(await asyncio.gather(*queued)):
                assert offset == pos and body == data[offset : offset + len(body)]
                pos += len(body)
    finally:
        await session.close()
        _teardown(a, b)


async def test_a_read_without_timeout_waits_the_default_5000_ms(tmp_path: Path, netns: str) -> None:
    """No timeout_ms: the read waits 5 s for the (frozen) peer, then says TIMEOUT with the
    range to get from the origin. B's own peer-request timeout is 60 s, so only the read's
    default deadline can end it."""
    a, b, session, h = await _frozen_holder_setup(tmp_path, netns)
    try:
        began = time.monotonic()
        async with session.post(
            f"/v1/contents/{h}/block-read", params={"offset": str(FAR), "max": str(BLOCK)}
        ) as r:
            body = await r.json()
        waited = time.monotonic() - began
        assert (r.status, body["error"], body["offset"]) == (504, "TIMEOUT", FAR)
        assert 5.0 <= waited < 30.0, waited
    finally:
        await session.close()
        _teardown(a, b)
