"""When the cache's file system cannot be written (it fills up, or goes read-only) the daemon
says UNAVAILABLE (status, with the reason, and events) and is degraded, not dead: cached
reads, content information and publication listings keep working, only writes are refused
with SERVICE_UNAVAILABLE and the reason; it recovers once it can write again."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.content import BLOCK, content, content_information
from tests.harness import DaemonProcess, start_daemon


def in_daemon_ns(pid: int, *cmd: str) -> None:
    subprocess.run(["nsenter", "--mount", "-t", str(pid), *cmd], check=False, capture_output=True)


async def next_status(events: aiohttp.ClientResponse) -> str:
    """The next STATUS_CHANGED (read events of the test's own handles are skipped)."""
    name = b""
    async for raw in events.content:
        if raw.startswith(b"event: "):
            name = raw[7:].strip()
        elif raw.startswith(b"data: ") and name == b"STATUS_CHANGED":
            return str(json.loads(raw[6:])["status"])
    raise AssertionError("event stream ended")


async def still_serves(
    d: DaemonProcess, api: aiohttp.ClientSession, data: bytes, reason: str
) -> None:
    """What must keep working, and what must fail saying ``reason``, while unwritable."""
    async with api.get("/v1/status") as r:
        doc = await r.json()
        assert doc["status"] == "UNAVAILABLE"
        assert reason in doc["unavailable_reason"]
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from peerdistd.cli import main; main()",
        "status", "--socket", str(d.socket),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    shown = (await cli.communicate())[0].decode()
    assert "UNAVAILABLE" in shown and reason in shown, shown  # peerdist status says why
    async with api.get("/v1/publications") as r:
        assert r.status == 200 and [p["id"] for p in (await r.json())["publications"]] == ["p"]
    async with api.get("/v1/publications/p") as r:
        assert r.status == 200
    async with api.get("/v1/publications/p/content-information") as r:
        assert r.status == 200
        ci = await r.read()
    async with api.post("/v1/contents", data=ci) as r:
        assert r.status == 201
        h = (await r.json())["handle"]
    async with api.post(f"/v1/contents/{h}/stream-read", params={"max": str(len(data))}) as r:
        assert r.status == 200 and await r.read() == data
    async with api.post("/v1/contents", data=b"\0" * 64) as r:
        assert r.status == 422  # bad input is still just bad input
    other = content(2 * BLOCK, seed=32)
    async with api.post("/v1/contents", data=content_information(other).to_bytes()) as r:
        h = (await r.json())["handle"]
    async with api.post(f"/v1/contents/{h}/stream-read") as r:
        assert r.status == 424  # not cached: from the origin, as ever
    async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=other) as r:
        assert r.status == 503
        doc = await r.json()
        assert doc["error"] == "SERVICE_UNAVAILABLE" and reason in doc["message"]
    async with api.post("/v1/publications", data=other) as r:
        assert r.status == 503 and reason in (await r.json())["message"]
    async with api.delete(f"/v1/contents/{h}") as r:
        assert r.status == 204


async def test_an_unwritable_cache_degrades_the_daemon(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs root, unshare and nsenter to remount the cache read-only (CI has them)")
    cache = tmp_path / "node-cache"
    cache.mkdir()
    # The daemon gets a mount namespace of its own where its cache directory is a small
    # tmpfs that the test can fill up, as a full disk would be.
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount -t tmpfs -o size=8m tmpfs "{cache}" && exec "$0" "$@"']  # fmt: skip
    d = start_daemon(tmp_path, prefix=prefix)
    data = content(3 * BLOCK, seed=31)
    try:
        async with (
            d.session() as api,
            api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=60)) as events,
        ):
            assert await next_status(events) == "AVAILABLE"
            async with api.post("/v1/publications", params={"id": "p"}, data=data) as r:
                assert r.status == 201
            fill = cache / "filler"
            in_daemon_ns(d.proc.pid, "dd", "if=/dev/zero", f"of={fill}", "bs=1M", "count=16")
            assert await next_status(events) == "UNAVAILABLE"
            await still_serves(d, api, data, "No space left on device")
            in_daemon_ns(d.proc.pid, "rm", "-f", str(fill))
            assert await next_status(events) == "AVAILABLE"

            # Read-only: a remount would be refused while the daemon has files open for
            # writing, so an empty read-only file system goes over the cache directory: the
            # files the daemon holds open still read, anything written by path is refused.
            read_only = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(cache)]
            in_daemon_ns(d.proc.pid, *read_only)
            assert await next_status(events) == "UNAVAILABLE"
            await still_serves(d, api, data, "Read-only file system")
            in_daemon_ns(d.proc.pid, "umount", str(cache))
            assert await next_status(events) == "AVAILABLE"
            async with api.get("/v1/status") as r:
                assert (await r.json())["unavailable_reason"] is None
            async with api.post("/v1/publications", data=content(BLOCK, seed=33)) as r:
                assert r.status == 201
        assert d.proc.poll() is None
        assert "cache directory not writable" in d.output()
    finally:
        d.stop()
        d.notify.close()
