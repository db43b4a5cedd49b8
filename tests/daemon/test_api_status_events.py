"""Status, server-sent events, the OpenAPI route and the enabled policy with SIGHUP reload."""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from tests.content import BLOCK, content, content_information
from tests.harness import DaemonProcess, start_daemon


async def sse(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, dict]]:
    name = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            yield name, json.loads(line[6:])


async def test_status_and_openapi(api: aiohttp.ClientSession) -> None:
    async with api.get("/v1/status") as r:
        status = await r.json()
    assert status["status"] == "AVAILABLE"
    assert len(status["node_id"]) == 32
    assert set(status["cache"]) == {
        *("bytes_used", "limit_bytes", "segments", "blocks", "evictions", "bad_blocks_from_disk")
    }
    assert status["counters"]["bytes_from_origin"] == 0
    async with api.get("/v1/openapi.json") as r:
        spec = await r.json()
    assert spec["openapi"].startswith("3.")
    assert "/v1/contents/{h}/stream-read" in spec["paths"] or any(
        p.endswith("/stream-read") for p in spec["paths"]
    )


async def test_read_events_follow_each_read(api: aiohttp.ClientSession) -> None:
    data = content(2 * BLOCK, seed=21)
    async with api.post("/v1/contents", data=content_information(data).to_bytes()) as r:
        h = (await r.json())["handle"]
    async with api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=30)) as events:
        stream = sse(events)
        assert await anext(stream) == ("STATUS_CHANGED", {"status": "AVAILABLE"})
        # A read that never started (unknown handle) leaves nothing behind ...
        async with api.post("/v1/contents/unknown/stream-read") as r:
            assert r.status == 404
        # ... a read that did gives START_COMPLETE then SHUTDOWN_COMPLETE with its id.
        async with api.post(f"/v1/contents/{h}/stream-read", params={"timeout_ms": "0"}) as r:
            assert r.status == 424
            missed_id = r.headers.get("PeerDist-Read-Id")
        name, started = await anext(stream)
        assert (name, started["handle"], started["status"], started["peer_accepted"]) == (
            "START_COMPLETE",
            h,
            "OK",
            False,
        )
        name, ended = await anext(stream)
        assert (name, ended["read_id"], ended["status"]) == (
            "SHUTDOWN_COMPLETE",
            started["read_id"],
            "MISSING_DATA",
        )
        assert missed_id is None  # errors carry no read id header; the events do
        async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=data) as r:
            assert r.status == 200
        async with api.post(f"/v1/contents/{h}/block-read", params={"offset": "0"}) as r:
            read_id = r.headers["PeerDist-Read-Id"]
        assert await anext(stream) == (
            "START_COMPLETE",
            {"handle": h, "read_id": read_id, "status": "OK", "peer_accepted": False},
        )
        assert await anext(stream) == (
            "SHUTDOWN_COMPLETE",
            {"handle": h, "read_id": read_id, "status": "OK"},
        )


async def test_disabled_by_policy_and_sighup_reload(tmp_path: Path) -> None:
    config = tmp_path / "peerdistd.toml"
    config.write_text("[daemon]\nenabled = true\n")
    d: DaemonProcess = start_daemon(tmp_path, "--config", str(config))
    try:
        async with d.session() as api:
            async with api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=30)) as events:
                stream = sse(events)
                assert await anext(stream) == ("STATUS_CHANGED", {"status": "AVAILABLE"})
                config.write_text(
                    "[daemon]\nenabled = false\n[cache]\nlimit_bytes = 123456789\n"
                    "[peers]\nlisten = '127.0.0.1:81'\n"
                )
                d.messages.clear()
                d.proc.send_signal(signal.SIGHUP)
                assert await anext(stream) == ("STATUS_CHANGED", {"status": "DISABLED"})
            d.wait_for("RELOADING=1")
            d.wait_for("READY=1")
            async with api.get("/v1/status") as r:
                status = await r.json()
                assert status["status"] == "DISABLED"
                assert status["cache"]["limit_bytes"] == 123456789
            for method, path in (
                ("POST", "/v1/contents"),
                ("POST", "/v1/publications"),
                ("GET", "/v1/cache"),
                ("GET", "/v1/events"),
            ):
                async with api.request(method, path, data=b"x") as r:
                    assert r.status == 501
                    assert (await r.json())["error"] == "NOT_SUPPORTED"
        assert "needing a restart: peers.listen" in d.output()
    finally:
        d.stop()
        d.notify.close()
