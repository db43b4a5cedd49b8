"""peerdistd.metrics: a fake engine's counters, scraped over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from peerdistd.errors import ConfigError
from peerdistd.metrics import (
    COUNTERS,
    GAUGES,
    READS,
    STATS_KEYS,
    MetricsEndpoint,
    make_registry,
    start_metrics_server,
)
from peerdistd.net.hosted_cache_client import OfferStats
from peerdistd.net.hosted_cache_pull import PullStats
from peerdistd.net.swarm import SwarmStats

BRIEF_KEYS = {
    *("bytes_from_cache", "bytes_from_peers", "bytes_from_origin", "bytes_served_to_peers"),
    *("discovery_attempts", "discovery_successes", "cache_hits", "cache_misses", "cache_bytes"),
    *("cache_limit_bytes", "cache_evictions", "open_handles", "publications", "reads_ok"),
    *("reads_missing_data", "reads_timeout", "reads_no_more", "reads_aborted"),
    *("reads_stream_limit", "bad_blocks", "banned_peers", "peers_known"),
    "bad_blocks_from_disk",
    *("scrub_blocks", "scrub_bad_blocks", "store_heals"),  # issue 8: the store checks itself
    *("hedges", "slow_answers", "busy_answers", "peer_errors"),  # the swarm's peer answers
    *(  # hosted cache mode: a hosted cache's pulls, a client's offers (status counters)
        f"hosted_cache_{key}"
        for key in (
            *("offers", "offers_dropped", "segments_queued", "segments_skipped"),
            *("blocks_pulled", "bytes_pulled", "unverified_blocks", "unverified_bytes"),
            *("unverified_refused", "bad_blocks", "pull_errors", "segments_offered"),
            *("offers_failed", "offers_skipped"),
        )
    ),
}


class FakeEngine:
    def __init__(self) -> None:
        # Distinct values, so that a metric wired to the wrong key shows.
        self.values: dict[str, float] = {
            key: float(1000 + index) for index, key in enumerate(sorted(BRIEF_KEYS))
        }
        self.values |= {"cache_hits": 3.0, "cache_misses": 1.0}
        self.values |= {"bytes_from_cache": 6e9, "bytes_from_peers": 2e9, "bytes_from_origin": 2e9}
        self.calls = 0

    def stats_snapshot(self) -> Mapping[str, float]:
        self.calls += 1
        return dict(self.values)


async def scrape(endpoint: MetricsEndpoint) -> tuple[dict[str, float], str, str]:
    async with aiohttp.ClientSession() as session, session.get(endpoint.url) as response:
        assert response.status == 200
        text = await response.text()
        content_type = response.headers["Content-Type"]
    samples = {
        sample.name
        + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return samples, text, content_type


def test_snapshot_keys_are_exactly_the_briefs() -> None:
    assert STATS_KEYS == BRIEF_KEYS


async def test_scrape_over_http_shows_exact_values() -> None:
    engine = FakeEngine()
    async with start_metrics_server(make_registry(engine), "127.0.0.1", 0) as endpoint:
        assert endpoint.host == "127.0.0.1"
        assert endpoint.port > 0
        samples, text, content_type = await scrape(endpoint)
    assert content_type == "text/plain; version=1.0.0; charset=utf-8"
    for key, (name, _) in COUNTERS.items():
        assert samples[name + "_total"] == engine.values[key], key
    for key, (name, _) in GAUGES.items():
        assert samples[name] == engine.values[key], key
    for key, result in READS.items():
        assert samples[f"peerdist_reads_total{{result={result}}}"] == engine.values[key], key
    assert samples["peerdist_cache_hit_ratio"] == 0.75
    assert samples["peerdist_wan_offload_ratio"] == 0.8
    assert samples["peerdist_bytes_from_cache_total"] == 6e9
    assert "# HELP peerdist_bytes_from_peers_total Bytes fetched from peers" in text
    assert "# TYPE peerdist_bytes_from_peers_total counter" in text
    assert "# TYPE peerdist_cache_bytes gauge" in text
    assert all(name.startswith("peerdist_") for name in samples)
    assert engine.calls == 1


async def test_each_scrape_reads_a_fresh_snapshot() -> None:
    engine = FakeEngine()
    before = engine.values["bytes_served_to_peers"]
    async with start_metrics_server(make_registry(engine), "127.0.0.1", 0) as endpoint:
        first, _, _ = await scrape(endpoint)
        engine.values["bytes_served_to_peers"] = 12345.0
        second, _, _ = await scrape(endpoint)
    assert first["peerdist_bytes_served_to_peers_total"] == before
    assert second["peerdist_bytes_served_to_peers_total"] == 12345.0
    assert engine.calls == 2


async def test_ratios_are_zero_before_any_read_and_missing_keys_are_left_out() -> None:
    class Empty:
        def stats_snapshot(self) -> Mapping[str, float]:
            return {"open_handles": 2.0}

    async with start_metrics_server(make_registry(Empty()), "127.0.0.1", 0) as endpoint:
        samples, _, _ = await scrape(endpoint)
    assert samples == {
        "peerdist_open_handles": 2.0,
        "peerdist_cache_hit_ratio": 0.0,
        "peerdist_wan_offload_ratio": 0.0,
    }


async def test_port_in_use_is_a_config_error() -> None:
    registry = make_registry(FakeEngine())
    async with start_metrics_server(registry, "127.0.0.1", 0) as endpoint:
        with pytest.raises(ConfigError, match=r"^metrics\.listen: cannot listen on 127\.0\.0\.1:"):
            async with start_metrics_server(registry, "127.0.0.1", endpoint.port):
                pass


async def test_server_is_gone_after_the_context() -> None:
    async with start_metrics_server(make_registry(FakeEngine()), "127.0.0.1", 0) as endpoint:
        pass
    with pytest.raises(aiohttp.ClientConnectionError):
        await scrape(endpoint)


def test_endpoint_url_brackets_ipv6() -> None:
    assert MetricsEndpoint("::1", 9595).url == "http://[::1]:9595/metrics"
    assert MetricsEndpoint("127.0.0.1", 9595).url == "http://127.0.0.1:9595/metrics"


def test_every_hosted_cache_and_swarm_counter_is_exported() -> None:
    """A counter added to these stats is exported too (or this test names it)."""
    hosted = {f"hosted_cache_{f.name}" for stats in (PullStats, OfferStats) for f in fields(stats)}
    assert hosted <= set(COUNTERS)
    assert {f.name for f in fields(SwarmStats)} <= set(COUNTERS)
