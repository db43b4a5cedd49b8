"""Counters like BranchCache's, kept as plain integers and read by metrics and status."""

from __future__ import annotations

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
