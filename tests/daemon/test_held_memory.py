"""Bounded memory: bytes added beyond the content information are held within one cap for the
whole daemon (daemon.held_limit_bytes), and past it an add gets SERVICE_UNAVAILABLE (finding 9)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

from tests.content import BLOCK, content
from tests.harness import DaemonProcess, start_daemon

MIB = 1 << 20
CAP = 128 * MIB
ADDED = 60 * MIB


def rss(d: DaemonProcess) -> int:
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def body(size: int) -> AsyncIterator[bytes]:
    chunk = content(MIB, seed=5)
    for _ in range(size // MIB):
        yield chunk


async def test_eight_handles_adding_beyond_their_content_information(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, env={"PEERDISTD_DAEMON_HELD_LIMIT_BYTES": str(CAP)})
    try:
        async with d.session() as api:
            async with api.post("/v1/publications", params={"id": "x"}, data=b"x" * BLOCK) as r:
                assert r.status == 201
            async with api.get("/v1/publications/x/content-information") as r:
                ci = await r.read()
            before = rss(d)
            answers = []
            for _ in range(8):
                async with api.post("/v1/contents", data=ci) as r:
                    h = (await r.json())["handle"]
                async with api.put(
                    f"/v1/contents/{h}/data", params={"offset": str(10 * MIB)}, data=body(ADDED)
                ) as r:
                    answers.append((r.status, json.loads(await r.read())))
            grown = rss(d) - before
        assert [a[0] for a in answers[:2]] == [200, 200]
        assert all(a[1]["held"] == ADDED for a in answers[:2])
        for status, error in answers[2:]:
            assert (status, error["error"]) == (503, "SERVICE_UNAVAILABLE"), error
            assert "daemon.held_limit_bytes" in error["message"]
        assert grown < CAP + 96 * MIB, f"daemon grew by {grown / MIB:.0f} MiB"
    finally:
        d.stop()
        d.notify.close()
