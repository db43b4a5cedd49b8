"""Every add-data request ends: any offset, length and piece size gets 200 or a documented
JSON error within a deadline, and the daemon keeps serving and stops on SIGTERM (finding 2)."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.content import BLOCK, content
from tests.harness import DaemonProcess, start_daemon

DEADLINE = aiohttp.ClientTimeout(total=15)
HUGE = 4611686018427387905  # (1 << 62) + 1: past the old "nothing described" sentinel
ADD_ERRORS = {"INVALID_PARAMETER", "INVALID_DATA", "SERVICE_UNAVAILABLE"}
DATA = content(4 * BLOCK + 4321, seed=71)


async def published_ci(d: DaemonProcess) -> bytes:
    async with d.session() as api:
        async with api.post("/v1/publications", params={"id": "x"}, data=DATA) as r:
            assert r.status == 201
        async with api.get("/v1/publications/x/content-information") as r:
            ci = await r.read()
        async with api.delete("/v1/cache") as r:  # the reader does not hold X
            assert r.status in (200, 204)
    return ci


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


async def add(d: DaemonProcess, h: str, offset: int, body: bytes, piece: int) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(d.socket)),
            base_url="http://peerdistd",
            timeout=DEADLINE,
        ) as api,
        api.put(
            f"/v1/contents/{h}/data", params={"offset": str(offset)}, data=pieces(body, piece)
        ) as r,
    ):
        return r.status, json.loads(await r.read())


async def open_handle(d: DaemonProcess, ci: bytes) -> str:
    async with d.session() as api, api.post("/v1/contents", data=ci) as r:
        assert r.status == 201
        return str((await r.json())["handle"])


async def test_offsets_past_every_description_answer_and_the_daemon_stays_usable(
    tmp_path: Path,
) -> None:
    d = start_daemon(tmp_path)
    try:
        ci = await published_ci(d)
        h = await open_handle(d, ci)
        for _ in range(6):
            status, body = await add(d, h, HUGE, b"\x01" * 1000, 1000)
            assert status == 200 and body["held"] > 0, body
        async with d.session() as api:
            async with api.post("/v1/publications", params={"id": "y"}, data=b"y" * 5000) as r:
                assert r.status == 201
            status, body = await add(d, h, 0, DATA[:BLOCK], BLOCK)
            assert (status, body["verified"]) == (200, BLOCK)
            async with api.delete("/v1/cache") as r:
                assert r.status in (200, 204)
    finally:
        assert d.stop(signal.SIGTERM) == 0
        d.notify.close()


OFFSETS = st.one_of(
    st.integers(0, 5 * BLOCK),
    st.integers((1 << 62) - 2 * BLOCK, (1 << 62) + 2 * BLOCK),
    st.integers((1 << 64) - 3 * BLOCK, (1 << 64) + 3),
    st.just(HUGE),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    offset=OFFSETS,
    length=st.integers(0, 3 * BLOCK),
    piece=st.integers(1, 3 * BLOCK),
    genuine=st.booleans(),
)
def test_add_data_always_answers(
    daemon: DaemonProcess, offset: int, length: int, piece: int, genuine: bool
) -> None:
    async def one() -> None:
        ci = await published_ci(daemon)
        h = await open_handle(daemon, ci)
        inside = offset + length <= len(DATA)
        body = (
            DATA[offset : offset + length]
            if genuine and inside
            else random.Random(offset).randbytes(length)
        )
        status, answer = await add(daemon, h, offset, body, piece)
        if genuine and inside:
            assert status == 200, answer
        elif status != 200:
            assert answer["error"] in ADD_ERRORS, answer
        if offset > (1 << 64) - 1:
            assert (status, answer["error"]) == (400, "INVALID_PARAMETER")
        async with daemon.session() as api, api.delete(f"/v1/contents/{h}") as r:
            assert r.status == 204

    asyncio.run(one())
