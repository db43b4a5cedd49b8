"""The swarm's answers from peers in /metrics and /v1/status: a reader beside a good holder
and one that trickles counts its hedges and slow answers (issue 8's bad peers; real daemons in
a network namespace of the test's own, the setup of test_peers_bad)."""

from __future__ import annotations

import random
from pathlib import Path

from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon
from tests.peers.badpeer import BadPeer
from tests.peers.test_peers_bad import BAD, GOOD, banned_soon, holders_found
from tests.peers.test_peers_loopback import counters, publish, read_all
from tests.service.test_service_daemon_metrics import scrape

SWARM = ("hedges", "slow_answers", "busy_answers", "peer_errors")


def _start(tmp_path: Path, netns: str, i: int, **kw: str) -> DaemonProcess:
    return start_daemon(
        tmp_path,
        "--listen",
        f"127.0.0.{i}:8080",
        name=f"node{i}",
        netns=netns,
        env={"PEERDISTD_PEERS_ZEROCONF": "false", **kw},
        metrics=f"127.0.0.{i}:9595" if i == 3 else "",
    )


async def test_hedges_and_slow_answers_are_counted_and_exported(tmp_path: Path, netns: str) -> None:
    data = random.Random(91).randbytes(64 * BLOCK)  # whole blocks: none fits a trickle in time
    started: list[DaemonProcess] = []
    try:
        a = _start(tmp_path, netns, 1)
        started.append(a)
        b = _start(tmp_path, netns, 2, PEERDISTD_PEERS_ADVERTISE=BAD)
        started.append(b)
        c = _start(tmp_path, netns, 3)
        started.append(c)
        ci = await publish(a, data)
        assert await read_all(b, ci) == data
        before = scrape(netns, "http://127.0.0.3:9595/metrics")
        assert all(before[f"peerdist_{key}_total"] == 0 for key in SWARM)
        with BadPeer(netns, ("127.0.0.4", 8080), ("127.0.0.2", 8080), "trickle"):
            await holders_found(c, ci, GOOD, BAD)
            assert await read_all(c, ci) == data
            seen = await banned_soon(c, BAD)
        assert seen[BAD]["banned"]
        status = await counters(c)
        after = scrape(netns, "http://127.0.0.3:9595/metrics")
    finally:
        for d in started:
            d.stop()
            d.notify.close()
    # The trickler was asked while the good holder was, or before it: each such block is a
    # hedge; each trickled answer under the floor rate a slow answer (and a peer error).
    for key in ("hedges", "slow_answers", "peer_errors"):
        assert status[key] >= 1, (key, status)
        assert after[f"peerdist_{key}_total"] >= status[key], key  # scraped a moment later
