"""Prometheus metrics of two real daemons in a network namespace of the test's own: node A
publishes, node B reads it from A through peers, adds other content it got from the "origin",
reads both again from its cache; every sample of both /metrics endpoints moves by exactly what
was done."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.content import BLOCK, content, content_information
from tests.harness import DaemonProcess, start_daemon

PEER_DATA = 3 * BLOCK + 1000  # four blocks of one segment ([MS-PCCRC] 2.2: 64 KiB blocks)
ORIGIN_DATA = 2 * BLOCK + 500
CACHE_LIMIT = 64 << 20

# Runs inside the namespace, where the endpoints are; no proxy from the environment applies.
SCRAPE = (
    "import sys, urllib.request as u; "
    "o = u.build_opener(u.ProxyHandler({})); "
    "sys.stdout.write(o.open(sys.argv[1], timeout=10).read().decode())"
)


@contextlib.contextmanager
def two_nodes(tmp_path: Path, netns: str) -> Iterator[tuple[DaemonProcess, DaemonProcess]]:
    started: list[DaemonProcess] = []
    try:
        for i in (1, 2):
            started.append(
                start_daemon(
                    tmp_path,
                    *("--listen", f"127.0.0.{i}:8080", "--metrics", f"127.0.0.{i}:9595"),
                    name=f"node{i}",
                    netns=netns,
                    env={
                        "PEERDISTD_PEERS_ZEROCONF": "false",
                        "PEERDISTD_CACHE_LIMIT_BYTES": str(CACHE_LIMIT),
                        "PEERDISTD_CACHE_SCRUB_BYTES_PER_SECOND": "0",  # exact counts below
                    },
                )
            )
        yield started[0], started[1]
    finally:
        for d in started:
            d.stop()
            d.notify.close()


def scrape(netns: str, url: str) -> dict[str, float]:
    """Every sample of one scrape, keyed ``name`` or ``name{label=value}``."""
    text = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", SCRAPE, url],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def metrics_url(api: aiohttp.ClientSession) -> str:
    async with api.get("/v1/status") as r:
        return str((await r.json())["listen"]["metrics"])


async def open_content(api: aiohttp.ClientSession, ci: bytes) -> str:
    async with api.post("/v1/contents", data=ci) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["handle"])


# The swarm's answers from peers: a fresh node has none.
SWARM_ANSWERS = [
    f"peerdist_{key}_total" for key in ("hedges", "slow_answers", "busy_answers", "peer_errors")
]


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """How far every sample of ``after`` moved since ``before`` (gauges included)."""
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def reads(**counts: int) -> dict[str, float]:
    results = ("aborted", "missing_data", "no_more", "ok", "stream_limit", "timeout")
    return {f"peerdist_reads_total{{result={r}}}": float(counts.get(r, 0)) for r in results}


async def test_counters_after_publish_peer_read_and_add_data(tmp_path: Path, netns: str) -> None:
    peer_data, origin_data = content(PEER_DATA, seed=51), content(ORIGIN_DATA, seed=52)
    with two_nodes(tmp_path, netns) as (a, b):
        async with a.session() as api_a, b.session() as api_b:
            url_a, url_b = await metrics_url(api_a), await metrics_url(api_b)
            assert (url_a, url_b) == (
                "http://127.0.0.1:9595/metrics",
                "http://127.0.0.2:9595/metrics",
            )
            start_a, start_b = scrape(netns, url_a), scrape(netns, url_b)
            # Two fresh nodes: everything but the cache limit is zero.
            assert start_a == start_b
            assert {k: v for k, v in start_b.items() if v} == {
                "peerdist_cache_limit_bytes": CACHE_LIMIT
            }

            # 1. Publish on A.
            async with api_a.post("/v1/publications", params={"id": "c"}, data=peer_data) as r:
                assert r.status == 201, await r.text()
            async with api_a.get("/v1/publications/c/content-information") as r:
                ci = await r.read()

            # 2. B reads it block by block from A: the first read misses, discovers A and fetches
            # its block with the blocks after it (read-ahead); every read returns bytes that
            # came from a peer, so each counts as a miss and no block is fetched twice.
            h1 = await open_content(api_b, ci)
            for offset in range(0, PEER_DATA, BLOCK):
                async with api_b.post(
                    f"/v1/contents/{h1}/block-read",
                    params={"offset": str(offset), "max": str(BLOCK), "timeout_ms": "5000"},
                ) as r:
                    assert r.status == 200, await r.text()
                    assert await r.read() == peer_data[offset : offset + BLOCK]

            # 3. Content from the "origin": the application adds what it fetched there, and
            # reads it back from the cache.
            h2 = await open_content(api_b, content_information(origin_data).to_bytes())
            async with api_b.put(
                f"/v1/contents/{h2}/data", params={"offset": "0"}, data=origin_data
            ) as r:
                assert (r.status, (await r.json())["verified"]) == (200, ORIGIN_DATA)
            async with api_b.post(
                f"/v1/contents/{h2}/stream-read", params={"max": str(1 << 20), "timeout_ms": "0"}
            ) as r:
                assert (r.status, await r.read()) == (200, origin_data)

            # 4. A third handle reads the peer content again: one read, all from the cache.
            h3 = await open_content(api_b, ci)
            stream_read = f"/v1/contents/{h3}/stream-read"
            async with api_b.post(stream_read, params={"max": str(1 << 20)}) as r:
                assert (r.status, await r.read()) == (200, peer_data)
            async with api_b.post(stream_read) as r:
                assert (r.status, (await r.json())["error"]) == (416, "NO_MORE")

            end_a, end_b = scrape(netns, url_a), scrape(netns, url_b)

    hit_ratio = 2 / (2 + 4)  # hits: steps 3 and 4; misses: the four reads of step 2
    from_cache = PEER_DATA + ORIGIN_DATA
    offload = (from_cache + PEER_DATA) / (from_cache + PEER_DATA + ORIGIN_DATA)
    assert moved(start_b, end_b) == {
        "peerdist_bytes_from_cache_total": from_cache,
        "peerdist_bytes_from_peers_total": PEER_DATA,
        "peerdist_bytes_from_origin_total": ORIGIN_DATA,
        "peerdist_bytes_served_to_peers_total": 0,
        "peerdist_discovery_attempts_total": 1,
        "peerdist_discovery_successes_total": 1,
        "peerdist_cache_hits_total": 2,
        "peerdist_cache_misses_total": 4,
        "peerdist_cache_evictions_total": 0,
        "peerdist_bad_blocks_total": 0,
        **dict.fromkeys(SWARM_ANSWERS, 0),  # one holder, answering well
        "peerdist_bad_blocks_from_disk_total": 0,
        "peerdist_scrub_blocks_total": 0,
        "peerdist_scrub_bad_blocks_total": 0,
        "peerdist_store_heals_total": 0,
        "peerdist_banned_peers": 0,
        "peerdist_cache_bytes": PEER_DATA + ORIGIN_DATA,
        "peerdist_cache_limit_bytes": 0,
        "peerdist_open_handles": 3,
        "peerdist_publications": 0,
        "peerdist_peers_known": 1,  # A, from its discovery answer (zeroconf is off)
        "peerdist_cache_hit_ratio": hit_ratio,
        "peerdist_wan_offload_ratio": offload,
        **reads(ok=6, no_more=1),
    }
    assert end_b["peerdist_cache_hit_ratio"] == hit_ratio
    assert end_b["peerdist_wan_offload_ratio"] == offload
    assert moved(start_a, end_a) == {
        "peerdist_bytes_from_cache_total": 0,
        "peerdist_bytes_from_peers_total": 0,
        "peerdist_bytes_from_origin_total": 0,
        "peerdist_bytes_served_to_peers_total": PEER_DATA,
        "peerdist_discovery_attempts_total": 0,
        "peerdist_discovery_successes_total": 0,
        "peerdist_cache_hits_total": 0,
        "peerdist_cache_misses_total": 0,
        "peerdist_cache_evictions_total": 0,
        "peerdist_bad_blocks_total": 0,
        **dict.fromkeys(SWARM_ANSWERS, 0),  # one holder, answering well
        "peerdist_bad_blocks_from_disk_total": 0,
        "peerdist_scrub_blocks_total": 0,
        "peerdist_scrub_bad_blocks_total": 0,
        "peerdist_store_heals_total": 0,
        "peerdist_banned_peers": 0,
        "peerdist_cache_bytes": PEER_DATA,
        "peerdist_cache_limit_bytes": 0,
        "peerdist_open_handles": 0,
        "peerdist_publications": 1,
        "peerdist_peers_known": 1,  # B, a client it served (zeroconf is off)
        "peerdist_cache_hit_ratio": 0,
        "peerdist_wan_offload_ratio": 0,
        **reads(),
    }
