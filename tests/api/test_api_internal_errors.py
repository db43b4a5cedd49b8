"""An exception nobody expected in a handler (here: an AssertionError out of the peer
network, as finding 10's HTTP/1.1 client raised when a serving peer died mid-read) becomes a
JSON SERVICE_UNAVAILABLE, never aiohttp's plain-text 500, and is logged with its traceback
once per site, not once per request. The real API application and runner on a real Unix
socket, with the real block cache; only the peer network is scripted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from peerdistd.api import failures
from peerdistd.api.app import make_app
from peerdistd.api.failures import ApiRunner, RateLimitedLog
from peerdistd.engine.core import Engine
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from peerdistd.store.blockcache import BlockCache
from peerdistd.store.publications import PublicationStore
from tests.content import BLOCK, PASSPHRASE, content, content_information


class BrokenPeers:
    """A peer network with a bug: every lookup fails an assertion."""

    async def locate(
        self,
        segment_ids: Sequence[bytes],
        *,
        timeout: float,
        probed: Callable[[bool], None] | None = None,
    ) -> Mapping[bytes, int]:
        raise AssertionError("connection state out of sync")

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        raise AssertionError("connection state out of sync")

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        raise AssertionError("connection state out of sync")

    def prefetch_hint(self, segment_ids: Sequence[bytes]) -> None:
        return None

    def add_holder(self, segment_ids: Sequence[bytes], endpoint: str) -> None:
        return None

    def at_limit(self, segment_id: bytes) -> bool:
        return False

    async def slot_freed(
        self, segment_id: bytes, *, timeout: float, among: Sequence[str] = ()
    ) -> None:
        return None


async def test_an_unexpected_exception_is_a_json_error_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failures, "LIMITER", RateLimitedLog())
    store = BlockCache.open(tmp_path / "cache", limit_bytes=1 << 30, sync=False)
    publications = PublicationStore.open(tmp_path / "publications.db")
    engine = Engine(store, publications, PASSPHRASE, peers=BrokenPeers())
    runner = ApiRunner(make_app(engine), handler_cancellation=True, access_log=None)
    await runner.setup()
    sock = tmp_path / "api.sock"
    try:
        await web.UnixSite(runner, str(sock)).start()
        ci = content_information(content(2 * BLOCK, seed=41)).to_bytes()
        async with aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(sock)), base_url="http://peerdistd"
        ) as api:
            async with api.post("/v1/contents", data=ci) as r:
                h = (await r.json())["handle"]
            with caplog.at_level(logging.ERROR, logger="peerdistd.api"):
                for _ in range(20):
                    async with api.post(f"/v1/contents/{h}/stream-read") as r:
                        assert r.status == 503
                        assert r.content_type == "application/json"
                        doc = await r.json()
                        assert doc["error"] == "SERVICE_UNAVAILABLE"
                        assert "AssertionError" in doc["message"]
            async with api.get("/v1/status") as r:
                assert r.status == 200  # and the API goes on
        logged = [r for r in caplog.records if r.name == "peerdistd.api"]
        assert len(logged) == 1
        assert logged[0].exc_info is not None  # the one line has the traceback
    finally:
        await runner.cleanup()
        await engine.aclose()
        store.close()
        publications.close()
