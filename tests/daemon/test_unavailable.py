"""When the cache's file system cannot be written (here: it fills up) the daemon says
UNAVAILABLE (status and events), refuses work with SERVICE_UNAVAILABLE, keeps running, and
recovers once it can write again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from tests.harness import start_daemon


def in_daemon_ns(pid: int, *cmd: str) -> None:
    subprocess.run(["nsenter", "--mount", "-t", str(pid), *cmd], check=False, capture_output=True)


async def next_status(events: aiohttp.ClientResponse) -> str:
    async for raw in events.content:
        if raw.startswith(b"data: "):
            return str(json.loads(raw[6:])["status"])
    raise AssertionError("event stream ended")


async def test_read_only_cache_makes_the_daemon_unavailable(tmp_path: Path) -> None:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs root, unshare and nsenter to remount the cache read-only (CI has them)")
    cache = tmp_path / "node-cache"
    cache.mkdir()
    # The daemon gets a mount namespace of its own where its cache directory is a small
    # tmpfs that the test can fill up, as a full disk would be.
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'mount -t tmpfs -o size=8m tmpfs "{cache}" && exec "$0" "$@"']  # fmt: skip
    d = start_daemon(tmp_path, prefix=prefix)
    try:
        async with (
            d.session() as api,
            api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=60)) as events,
        ):
            assert await next_status(events) == "AVAILABLE"
            fill = cache / "filler"
            in_daemon_ns(d.proc.pid, "dd", "if=/dev/zero", f"of={fill}", "bs=1M", "count=16")
            assert await next_status(events) == "UNAVAILABLE"
            async with api.get("/v1/status") as r:
                assert (await r.json())["status"] == "UNAVAILABLE"
            async with api.post("/v1/contents", data=b"\0" * 64) as r:
                assert r.status == 503
                assert (await r.json())["error"] == "SERVICE_UNAVAILABLE"
            in_daemon_ns(d.proc.pid, "rm", "-f", str(fill))
            assert await next_status(events) == "AVAILABLE"
        assert d.proc.poll() is None
        assert "cache directory not writable" in d.output()
    finally:
        d.stop()
        d.notify.close()
