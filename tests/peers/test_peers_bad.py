"""Bad peers cost little (issue 8): beside a good holder, a peer that trickles its answers or
resets every connection is backed off and banned, and reads come from the good holder; a
peer that hangs up or is killed mid-read never makes the application see a 500.

Real daemons on 127.0.0.1-3 in a network namespace of the test's own; the bad peer is a real
daemon (127.0.0.2) advertising a proxy (127.0.0.4, tests/peers/badpeer.py) that misbehaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon
from tests.peers.badpeer import BadPeer
from tests.peers.test_peers_loopback import publish, read_all

SIZE = 64 * BLOCK + 1234
GOOD, BAD = "127.0.0.1:8080", "127.0.0.4:8080"
BAN_WAIT = 30.0  # seconds a ban may take to show (a trickled request fails after ~1.5 s)


def _start(tmp_path: Path, netns: str, i: int, **env: str) -> DaemonProcess:
    return start_daemon(
        tmp_path,
        "--listen",
        f"127.0.0.{i}:8080",
        name=f"node{i}",
        netns=netns,
        env={"PEERDISTD_PEERS_ZEROCONF": "false", **env},
    )


@contextlib.contextmanager
def good_bad_reader(
    tmp_path: Path, netns: str, **reader_env: str
) -> Iterator[tuple[DaemonProcess, DaemonProcess, DaemonProcess]]:
    """A good holder (127.0.0.1), a holder that advertises the proxy (127.0.0.2 as
    127.0.0.4) and a reader (127.0.0.3)."""
    started: list[DaemonProcess] = []
    try:
        started.append(_start(tmp_path, netns, 1))
        started.append(_start(tmp_path, netns, 2, PEERDISTD_PEERS_ADVERTISE=BAD))
        started.append(_start(tmp_path, netns, 3, **reader_env))
        yield started[0], started[1], started[2]
    finally:
        for d in started:
            d.stop()
            d.notify.close()


async def peers_seen(d: DaemonProcess) -> dict[str, dict[str, Any]]:
    async with d.session() as api, api.get("/v1/peers") as r:
        return {p["address"]: p for p in (await r.json())["peers"]}


async def holders_found(c: DaemonProcess, ci: bytes, *holders: str) -> None:
    """Until C's latest discovery round for ``ci`` found every one of ``holders`` (a holder's
    answer can miss a round on a loaded machine; the answers are then cached for 3 s)."""
    deadline = time.monotonic() + BAN_WAIT
    began = time.time()  # wall clock, as the daemon stamps last_seen
    async with c.session() as api:
        while True:
            # An immediate open starts discovery for the content (a fresh probe once the
            # cached answer has expired).
            async with api.post("/v1/contents", params={"flags": "immediate"}, data=ci) as r:
                h = (await r.json())["handle"]
            async with api.delete(f"/v1/contents/{h}"):
                pass
            seen = await peers_seen(c)
            # Every holder heard from since we began (a discovery answer or a delivered block
            # stamps last_seen, so one round need not stamp them all alike).
            stamps = [seen.get(holder, {}).get("last_seen", 0.0) for holder in holders]
            if all(stamp >= began for stamp in stamps):
                return
            assert time.monotonic() < deadline, f"C never found all of {holders}: {seen}"
            await asyncio.sleep(0.2)  # polling a condition, bounded by BAN_WAIT


async def banned_soon(d: DaemonProcess, address: str) -> dict[str, dict[str, Any]]:
    """``d``'s view of its peers once ``address`` is banned (or after BAN_WAIT seconds)."""
    deadline = time.monotonic() + BAN_WAIT
    while True:
        seen = await peers_seen(d)
        if seen.get(address, {}).get("banned") or time.monotonic() > deadline:
            return seen
        await asyncio.sleep(0.1)  # polling a condition, bounded by BAN_WAIT


async def test_trickling_peer_is_banned_and_the_read_comes_from_the_good_one(
    tmp_path: Path, netns: str
) -> None:
    # Whole blocks only: a short last block would fit through the trickle in time, and a good
    # answer clears a peer's record.
    data = random.Random(81).randbytes(64 * BLOCK)
    with good_bad_reader(tmp_path, netns) as (a, b, c):
        ci = await publish(a, data)
        assert await read_all(b, ci) == data  # B now holds the blocks under A's segment ids
        with BadPeer(netns, ("127.0.0.4", 8080), ("127.0.0.2", 8080), "trickle") as bad:
            await holders_found(c, ci, GOOD, BAD)
            assert await read_all(c, ci) == data
            seen = await banned_soon(c, BAD)
            assert bad.connections >= 1  # it was asked ...
        assert seen[BAD]["banned"] and seen[BAD]["errors"] >= 8  # ... failed 8 times: banned
        assert not seen[GOOD]["banned"] and seen[GOOD]["errors"] == 0
        assert seen[GOOD]["bytes_from"] == len(data) and seen[BAD]["bytes_from"] == 0


async def test_resetting_peer_is_banned_and_the_read_comes_from_the_good_one(
    tmp_path: Path, netns: str
) -> None:
    data = random.Random(82).randbytes(SIZE)
    with good_bad_reader(tmp_path, netns) as (a, b, c):
        ci = await publish(a, data)
        assert await read_all(b, ci) == data  # B now holds the blocks under A's segment ids
        with BadPeer(netns, ("127.0.0.4", 8080), ("127.0.0.2", 8080), "reset") as bad:
            await holders_found(c, ci, GOOD, BAD)
            assert await read_all(c, ci) == data
            seen = await banned_soon(c, BAD)
        # Asked for 8 blocks or more (a run of blocks fails as that many requests): banned.
        assert bad.connections >= 1 and seen[BAD]["errors"] >= 8
        assert seen[BAD]["banned"] and seen[BAD]["bytes_from"] == 0
        assert seen[GOOD]["bytes_from"] == SIZE and not seen[GOOD]["banned"]


async def test_peer_hanging_up_at_once_never_gives_the_application_a_500(
    tmp_path: Path, netns: str
) -> None:
    # What a killed peer's accepted connections do. It used to trip an AssertionError in the
    # client that reached the application as a plain-text 500 (issue 8, finding 10).
    data = random.Random(83).randbytes(SIZE)
    with good_bad_reader(tmp_path, netns) as (a, b, c):
        ci = await publish(a, data)
        assert await read_all(b, ci) == data
        with BadPeer(netns, ("127.0.0.4", 8080), ("127.0.0.2", 8080), "hangup") as bad:
            await holders_found(c, ci, GOOD, BAD)
            assert await read_all(c, ci) == data  # every read answered 200
            seen = await banned_soon(c, BAD)
        assert bad.connections >= 1
        assert seen[BAD]["banned"] and seen[GOOD]["bytes_from"] == SIZE


async def _publish_as(d: DaemonProcess, name: str, data: bytes) -> bytes:
    async with d.session() as api:
        body = io.BytesIO(data)
        async with api.post("/v1/publications", params={"id": name}, data=body) as r:
            assert r.status == 201, await r.text()
        async with api.get(f"/v1/publications/{name}/content-information") as r:
            return await r.read()


async def test_serving_peer_killed_mid_read_again_and_again(tmp_path: Path, netns: str) -> None:
    # A serves C and is killed in the middle of each read, then comes back; B holds it all.
    # C never bans for failures here, so A is in every round. The application sees 200s only.
    rounds = 3
    # Longer than the read-ahead (64 blocks), so A dies with the read's fetches in flight.
    contents = [random.Random(90 + i).randbytes(200 * BLOCK) for i in range(rounds)]
    started: list[DaemonProcess] = []  # every daemon, stopped at the end whatever happens
    try:
        started.append(a := _start(tmp_path, netns, 1))
        started.append(b := _start(tmp_path, netns, 2))
        started.append(c := _start(tmp_path, netns, 3, PEERDISTD_PEERS_FAILURES_TO_BAN="0"))
        infos = [await _publish_as(a, f"c{i}", data) for i, data in enumerate(contents)]
        for ci, data in zip(infos, contents, strict=True):
            assert await read_all(b, ci) == data
        statuses: list[int] = []
        killed_at: list[int] = []  # how much C had read when A was killed, each round
        for ci, data in zip(infos, contents, strict=True):
            await holders_found(c, ci, GOOD, "127.0.0.2:8080")
            served_before = await served_by(a)
            out = b""
            async with c.session() as api:
                async with api.post("/v1/contents", data=ci) as r:
                    h = (await r.json())["handle"]
                while True:
                    async with api.post(
                        f"/v1/contents/{h}/stream-read",
                        params={"max": str(4 * BLOCK), "timeout_ms": "10000"},
                    ) as r:
                        statuses.append(r.status)
                        if r.status == 416:
                            break
                        assert r.status == 200, await r.text()
                        out += await r.read()
                    # Once A has served C some of it (its first run may come after B's: the
                    # order of holders is per run), A dies in the middle of the read.
                    if (
                        a.proc.poll() is None
                        and len(out) >= 8 * BLOCK
                        and await served_by(a) > served_before
                    ):
                        a.stop(signal.SIGKILL)
                        killed_at.append(len(out))
            assert killed_at and killed_at[-1] < len(data), "A was not killed mid-read"
            assert out == data
            a.notify.close()
            started.append(a := _start(tmp_path, netns, 1))  # back, with its cache
        assert 500 not in statuses
    finally:
        for d in started:
            d.stop()
            if d.notify.fileno() >= 0:
                d.notify.close()


async def served_by(d: DaemonProcess) -> float:
    async with d.session() as api, api.get("/v1/status") as r:
        return float((await r.json())["counters"]["bytes_served_to_peers"])
