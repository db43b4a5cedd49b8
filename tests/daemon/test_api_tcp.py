"""The optional loopback TCP listener: same API, caller identified through /proc/net/tcp."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp

from tests.harness import start_daemon


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_api_over_loopback_tcp_knows_the_caller(tmp_path: Path) -> None:
    port = free_port()
    d = start_daemon(tmp_path, "--api-tcp", f"127.0.0.1:{port}")
    try:
        async with (
            d.session() as api,
            api.post("/v1/publications", params={"id": "unix"}, data=b"x" * 1000) as r,
        ):
            assert r.status == 201
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}") as tcp:
            async with tcp.get("/v1/status") as r:
                status = await r.json()
                assert status["listen"]["tcp"].endswith(f"127.0.0.1:{port}")
            # Same uid as over the Unix socket (root here): it sees and owns the publication.
            async with tcp.get("/v1/publications") as r:
                assert [p["id"] for p in (await r.json())["publications"]] == ["unix"]
            async with tcp.delete("/v1/publications/unix") as r:
                assert r.status == 204
    finally:
        d.stop()
        d.notify.close()


def test_non_loopback_api_tcp_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "peerdistd.daemon", "serve", "--api-tcp", "0.0.0.0:9999",
         "--state-dir", str(tmp_path / "s"), "--socket", str(tmp_path / "a.sock"), "--no-peers"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2
    assert "daemon.api_tcp" in out.stderr
