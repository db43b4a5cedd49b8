"""Counters like BranchCache's, kept as plain integers and read by metrics and status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class Counters:
    """Monotonic counters of the engine (names are the metrics snapshot keys)."""

    bytes_from_cache: int = 0
    bytes_from_peers: int = 0  # bytes applications read that came from peers
    peer_bytes_fetched: int = 0  # bytes fetched from peers (read-ahead included)
    bytes_from_origin: int = 0
    bytes_served_to_peers: int = 0
    discovery_attempts: int = 0
    discovery_successes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    reads_ok: int = 0
    reads_missing_data: int = 0
    reads_timeout: int = 0
    reads_no_more: int = 0
    reads_aborted: int = 0
    reads_stream_limit: int = 0
    bad_blocks: int = 0
    banned_peers: int = 0
    invalid_data: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def snapshot(
    counters: Counters, extras: Iterable[Mapping[str, float]], **gauges: int
) -> dict[str, int]:
    """Every counter and gauge as an integer (they all count things or bytes), plus
    ``bytes_kept_off_wan``: what applications got without the origin (cache + peers)."""
    snap = counters.as_dict()
    snap.update(gauges)
    for extra in extras:
        snap.update({key: int(value) for key, value in extra.items()})
    snap["bytes_kept_off_wan"] = snap["bytes_from_cache"] + snap["bytes_from_peers"]
    return snap


def hit_ratios(snap: Mapping[str, float]) -> dict[str, float | None]:
    """BranchCache's hit ratio, by bytes: of everything applications got (from the local
    cache, from peers, from the origin through add-data), the share that did not cross the
    WAN (``branch``: cache + peers) and the share this node already had (``local``: cache).
    None before any bytes were read."""
    cache, peers = snap.get("bytes_from_cache", 0), snap.get("bytes_from_peers", 0)
    total = cache + peers + snap.get("bytes_from_origin", 0)
    if not total:
        return {"branch": None, "local": None}
    return {"branch": round((cache + peers) / total, 6), "local": round(cache / total, 6)}
