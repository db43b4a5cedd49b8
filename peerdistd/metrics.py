"""Prometheus metrics: the engine's plain counters exposed like BranchCache's performance counters.

The engine keeps a snapshot of numbers (:class:`StatsSource`); a custom collector reads it at
each scrape, so nothing here sits on the data path.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from peerdistd.errors import ConfigError

LOG = logging.getLogger(__name__)


class StatsSource(Protocol):
    def stats_snapshot(self) -> Mapping[str, float]:
        """Current values of every key of :data:`STATS_KEYS` (missing keys are not exported)."""
        ...


# key -> (metric name without _total, help). Counters only ever grow.
COUNTERS: dict[str, tuple[str, str]] = {
    "bytes_from_cache": (
        "peerdist_bytes_from_cache",
        "Bytes read by applications from the local cache.",
    ),
    "bytes_from_peers": (
        "peerdist_bytes_from_peers",
        "Bytes fetched from peers (MS-PCCRR) and verified.",
    ),
    "bytes_from_origin": (
        "peerdist_bytes_from_origin",
        "Bytes applications added from the origin server.",
    ),
    "bytes_served_to_peers": ("peerdist_bytes_served_to_peers", "Bytes of blocks served to peers."),
    "discovery_attempts": (
        "peerdist_discovery_attempts",
        "Reads that waited for a discovery round (MS-PCCRD probes).",
    ),
    "discovery_successes": (
        "peerdist_discovery_successes",
        "Discoveries that found at least one peer.",
    ),
    "cache_hits": ("peerdist_cache_hits", "Reads answered from the local cache."),
    "cache_misses": (
        "peerdist_cache_misses",
        "Reads that needed data the local cache did not hold.",
    ),
    "cache_evictions": (
        "peerdist_cache_evictions",
        "Blocks evicted from the cache to respect its limit.",
    ),
    "bad_blocks": (
        "peerdist_bad_blocks",
        "Blocks from peers or applications that failed verification.",
    ),
    "bad_blocks_from_disk": (
        "peerdist_bad_blocks_from_disk",
        "Cached blocks whose bytes no longer hashed to their hash on a read: dropped.",
    ),
    "scrub_blocks": ("peerdist_scrub_blocks", "Cached blocks re-hashed by the background scrub."),
    "scrub_bad_blocks": (
        "peerdist_scrub_bad_blocks",
        "Cached blocks the background scrub found damaged on disk (and dropped).",
    ),
    "store_heals": (
        "peerdist_store_heals",
        "Damaged store files (cache index, publications) set aside and rebuilt.",
    ),
    # The swarm's answers from peers (net.swarm.SwarmStats).
    "hedges": (
        "peerdist_hedges",
        "Blocks asked of another holder before the first one asked had answered (hedging).",
    ),
    "slow_answers": (
        "peerdist_slow_answers",
        "Peer answers abandoned for arriving under the floor rate (peers.min_transfer_rate).",
    ),
    "busy_answers": (
        "peerdist_busy_answers",
        "Peer answers saying the peer was at its upload limit ([MS-PCCRR] 3.2.5.2).",
    ),
    "peer_errors": (
        "peerdist_peer_errors",
        "Block requests to peers that failed (timeouts, resets, bad answers, slow answers).",
    ),
}

# Hosted cache mode ([MS-PCHC]): the server role's pulls, then a client role's offers. Keys
# are the hosted_cache_* counters of /v1/status; present only in the role that has them.
_HOSTED_CACHE: dict[str, str] = {
    "offers": "Offers received (v1.0 SEGMENT_INFO and v2.0 BATCHED_OFFER segments).",
    "offers_dropped": "Malformed offers dropped by closing the connection.",
    "segments_queued": "Offered segments queued to be pulled from their offerer.",
    "segments_skipped": "Offered segments not pulled: the pull queue was full.",
    "blocks_pulled": "Blocks pulled from offerers, verified and kept.",
    "bytes_pulled": "Bytes of blocks pulled from offerers, verified and kept.",
    "unverified_blocks": "Blocks of v2.0 offers kept encrypted (not verifiable here).",
    "unverified_bytes": "Bytes of v2.0 offers kept encrypted (not verifiable here).",
    "unverified_refused": "Unverifiable blocks not kept: over the offerer's share, or held.",
    "bad_blocks": "Pulled blocks that failed verification (not kept).",
    "pull_errors": "Pulls from offerers that failed.",
    "segments_offered": "Segments this node offered to its hosted cache.",
    "offers_failed": "Offers to the hosted cache that failed.",
    "offers_skipped": "Segments not offered: the offer queue was full.",
}
COUNTERS |= {
    f"hosted_cache_{key}": (f"peerdist_hosted_cache_{key}", doc)
    for key, doc in _HOSTED_CACHE.items()
}

GAUGES: dict[str, tuple[str, str]] = {
    "cache_bytes": ("peerdist_cache_bytes", "Bytes held in the block cache."),
    "cache_limit_bytes": ("peerdist_cache_limit_bytes", "Size limit of the block cache in bytes."),
    "open_handles": ("peerdist_open_handles", "Open content handles of local applications."),
    "publications": ("peerdist_publications", "Published contents held by this node."),
    "banned_peers": (
        "peerdist_banned_peers",
        "Peers currently ignored after bad blocks or repeated failures.",
    ),
    "peers_known": ("peerdist_peers_known", "Peers seen recently through discovery."),
}

# Read outcomes, one labelled counter: the PeerDist result of each completed read.
READS: dict[str, str] = {
    "reads_ok": "ok",
    "reads_missing_data": "missing_data",
    "reads_timeout": "timeout",
    "reads_no_more": "no_more",
    "reads_aborted": "aborted",
    "reads_stream_limit": "stream_limit",
}

STATS_KEYS: frozenset[str] = frozenset(COUNTERS) | frozenset(GAUGES) | frozenset(READS)


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole > 0 else 0.0


class StatsCollector(Collector):
    """Turns one ``stats_snapshot()`` per scrape into metric families."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        snap = self._source.stats_snapshot()
        for key, (name, doc) in COUNTERS.items():
            if key in snap:
                yield CounterMetricFamily(name, doc, value=snap[key])
        for key, (name, doc) in GAUGES.items():
            if key in snap:
                yield GaugeMetricFamily(name, doc, value=snap[key])
        reads = CounterMetricFamily(
            "peerdist_reads", "Completed reads by PeerDist result.", labels=["result"]
        )
        for key, result in READS.items():
            if key in snap:
                reads.add_metric([result], snap[key])
        yield reads
        hits, misses = snap.get("cache_hits", 0.0), snap.get("cache_misses", 0.0)
        yield GaugeMetricFamily(
            "peerdist_cache_hit_ratio",
            "cache_hits / (cache_hits + cache_misses); 0 before the first read.",
            value=_ratio(hits, hits + misses),
        )
        local = snap.get("bytes_from_cache", 0.0) + snap.get("bytes_from_peers", 0.0)
        yield GaugeMetricFamily(
            "peerdist_wan_offload_ratio",
            "Share of bytes read that did not cross the WAN: (cache + peers) / (cache + peers + "
            "origin); 0 before the first read.",
            value=_ratio(local, local + snap.get("bytes_from_origin", 0.0)),
        )


def make_registry(source: StatsSource) -> CollectorRegistry:
    """A registry holding only peerdistd's metrics (no process or GC collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(source))
    return registry


@dataclass(frozen=True, slots=True)
class MetricsEndpoint:
    """Where the metrics server listens (``port`` resolved when 0 was asked for)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"


def make_metrics_app(registry: CollectorRegistry) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


@asynccontextmanager
async def start_metrics_server(
    registry: CollectorRegistry, host: str, port: int
) -> AsyncIterator[MetricsEndpoint]:
    """Serve ``GET /metrics`` on ``host:port`` until the context exits."""
    runner = web.AppRunner(make_metrics_app(registry), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError("metrics.listen", f"cannot listen on {host}:{port}: {exc}") from exc
        endpoint = MetricsEndpoint(host, int(runner.addresses[0][1]))
        LOG.info("metrics on %s", endpoint.url)
        yield endpoint
    finally:
        await runner.cleanup()
