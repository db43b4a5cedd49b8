"""What an admin sees after a fetch from peers, against real daemons in a network namespace of
the test's own: status counts bytes as BranchCache does, counters are integers, and the log
at the default level tells what happened (publish, reads per handle, flushes, unpublish)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
from pathlib import Path

from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon
from tests.peers.test_peers_loopback import SIZE, nodes, publish


async def read_and_close(d: DaemonProcess, ci: bytes) -> tuple[str, bytes]:
    out = b""
    async with d.session() as api:
        async with api.post("/v1/contents", data=ci) as r:
            h = str((await r.json())["handle"])
        while True:
            async with api.post(f"/v1/contents/{h}/stream-read", params={"max": str(1 << 20)}) as r:
                if r.status == 416:
                    break
                assert r.status == 200, await r.text()
                out += await r.read()
        async with api.delete(f"/v1/contents/{h}") as r:
            assert r.status == 204
    return h, out


def cli(d: DaemonProcess, *args: str) -> str:
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from peerdistd.cli import main; sys.exit(main())",
            *args,
            "--socket",
            str(d.socket),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout


async def test_a_fetch_from_peers_is_a_hit_and_is_logged(tmp_path: Path, netns: str) -> None:
    data = random.Random(91).randbytes(SIZE)
    with nodes(tmp_path, netns, 2) as (a, b):
        ci = await publish(a, data)
        handle, got = await read_and_close(b, ci)
        assert got == data
        async with b.session() as api, api.get("/v1/status") as r:
            status = await r.json()
        counters = status["counters"]
        assert all(type(v) is int for v in counters.values()), counters
        assert counters["bytes_from_peers"] == SIZE and counters["bytes_kept_off_wan"] == SIZE
        # BranchCache's ratio by bytes: everything came from the branch, nothing from the WAN.
        assert status["hit_ratio"] == {"branch": 1.0, "local": 0.0}
        human = await asyncio.to_thread(cli, b, "status")
        assert re.search(r"hit ratio \(cache \+ peers\) *│ *100\.0%", human), human
        assert re.search(r"kept off the WAN *│ *3\.0 MiB", human), human
        as_json = json.loads(await asyncio.to_thread(cli, b, "status", "--json"))
        assert all(type(v) is int for v in as_json["counters"].values())
        assert as_json["hit_ratio"] == {"branch": 1.0, "local": 0.0}

        async with b.session() as api, api.delete("/v1/cache") as r:
            assert (await r.json())["freed"] == SIZE
        async with a.session() as api, api.delete("/v1/publications/c") as r:
            assert r.status == 204
        log_a, log_b = a.output(), b.output()
        assert re.search(r"node \w+: state in \S+node1-state, cache in \S+node1-cache \(", log_a)
        assert f"published 'c' for uid 0: {SIZE} bytes, V1 sha256, 1 segments" in log_a
        assert f"unpublished 'c' of uid 0 ({SIZE} bytes)" in log_a
        assert f"cache flushed: {SIZE} bytes freed, 0 kept for publications" in log_b
        assert (
            f"handle {handle} of uid 0 closed: " in log_b
            and f"of a {SIZE}-byte content; bytes from cache 0, from peers {SIZE}, from origin 0"
            in log_b
        ), log_b


async def test_origin_bytes_count_in_the_summary_and_the_ratio(tmp_path: Path, netns: str) -> None:
    """Content no peer has: the application adds it from the origin, then reads it back."""
    data = random.Random(92).randbytes(4 * BLOCK)
    with nodes(tmp_path, netns, 1) as (a,):
        ci = await publish(a, data)
        async with a.session() as api:  # the publisher's own cache would answer: empty it
            async with api.delete("/v1/cache", params={"publications": "true"}) as r:
                assert r.status == 200 and (await r.json())["freed"] == len(data)
            async with api.post("/v1/contents", data=ci) as r:
                h = str((await r.json())["handle"])
            async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=data) as r:
                assert r.status == 200
            async with api.post(f"/v1/contents/{h}/stream-read", params={"max": str(BLOCK)}) as r:
                assert r.status == 200
            async with api.post(f"/v1/contents/{h}/flush") as r:
                assert r.status == 204
            async with api.delete(f"/v1/contents/{h}") as r:
                assert r.status == 204
            async with api.get("/v1/status") as r:
                status = await r.json()
        # 4 blocks from the origin, 1 read back from the cache: 1/5 kept off the WAN.
        assert status["hit_ratio"] == {"branch": 0.2, "local": 0.2}
        log = a.output()
        assert f"flushed the content of handle {h} of uid 0: " in log
        assert (
            f"handle {h} of uid 0 closed: 1 reads of a {4 * BLOCK}-byte content; bytes from "
            f"cache {BLOCK}, from peers 0, from origin {4 * BLOCK}" in log
        ), log


async def test_a_wildcard_listener_is_logged_as_bound(tmp_path: Path, netns: str) -> None:
    d = start_daemon(
        tmp_path,
        "--listen",
        "0.0.0.0:8080",
        netns=netns,
        env={"PEERDISTD_PEERS_ZEROCONF": "false"},
    )
    try:
        # The namespace has only loopback: the daemon advertises 127.0.0.1 (and says why),
        # but it listens on every address, and says that.
        assert "serving peers on 0.0.0.0:8080 (advertised as 127.0.0.1:8080)" in d.output()
    finally:
        d.stop()
        d.notify.close()
