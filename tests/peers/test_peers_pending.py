"""Reads that are pending on a peer, against real daemons: close aborts them
(OPERATION_ABORTED) and a client that goes away gets its handle reclaimed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import signal
from pathlib import Path

import aiohttp

from tests.content import BLOCK
from tests.harness import start_daemon

SIZE = 200 * BLOCK  # more than the read-ahead of the first read (64 blocks)


async def _frozen_holder_setup(tmp_path: Path, netns: str):  # type: ignore[no-untyped-def]
    a = start_daemon(tmp_path, "--listen", "127.0.0.1:8080", name="a", netns=netns,
                     env={"PEERDISTD_PEERS_ZEROCONF": "false"})  # fmt: skip
    b = start_daemon(
        tmp_path, "--listen", "127.0.0.2:8080", name="b", netns=netns,
        # A frozen holder, asked with a long request timer and no floor rate: reads pend.
        env={"PEERDISTD_PEERS_ZEROCONF": "false", "PEERDISTD_PEERS_REQUEST_TIMEOUT_MS": "60000",
             "PEERDISTD_PEERS_MIN_TRANSFER_RATE": "0"},
    )  # fmt: skip
    data = random.Random(51).randbytes(SIZE)
    async with a.session() as api:
        async with api.post("/v1/publications", params={"id": "x"}, data=io.BytesIO(data)) as r:
            assert r.status == 201
        async with api.get("/v1/publications/x/content-information") as r:
            ci = await r.read()
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


def _teardown(a, b) -> None:  # type: ignore[no-untyped-def]
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
