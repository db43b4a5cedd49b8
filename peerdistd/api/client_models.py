"""What the local API client reads from answers: frozen values parsed from JSON, and errors."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from peerdistd.errors import API_ERRORS, ApiError, MissingData, ServiceUnavailable, Timeout

_STATUS_ERRORS = {cls.status: cls for cls in API_ERRORS.values()}


def _timestamp(value: Any) -> float:
    """Unix seconds from a number or, leniently, an ISO 8601 string."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value)


@dataclass(frozen=True, slots=True)
class CacheUsage:
    bytes_used: int
    limit_bytes: int
    segments: int
    blocks: int
    evictions: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CacheUsage:
        return cls(
            *(int(d[k]) for k in ("bytes_used", "limit_bytes", "segments", "blocks", "evictions"))
        )


@dataclass(frozen=True, slots=True)
class CacheVerifyReport:
    """``POST /v1/cache/verify``: what was checked, and what failed and was dropped."""

    segments: int
    blocks: int
    bad_blocks: int
    bytes_dropped: int
    orphan_files: int

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CacheVerifyReport:
        keys = ("segments", "blocks", "bad_blocks", "bytes_dropped", "orphan_files")
        return cls(*(int(d[k]) for k in keys))


@dataclass(frozen=True, slots=True)
class Peer:
    node_id: str
    address: str
    last_seen: float
    source: str | None = None  # only in GET /v1/peers
    bytes_from: int = 0  # verified block bytes this node fetched from the peer
    bytes_to: int = 0  # block bytes this node served to the peer
    bad_blocks: int = 0
    banned: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Peer:
        source = d.get("source")
        return cls(
            str(d["node_id"]),
            str(d["address"]),
            _timestamp(d["last_seen"]),
            None if source is None else str(source),
            int(d.get("bytes_from", 0)),
            int(d.get("bytes_to", 0)),
            int(d.get("bad_blocks", 0)),
            bool(d.get("banned", False)),
        )


@dataclass(frozen=True, slots=True)
class Listen:
    socket: str
    peers: str | None
    tcp: str | None = None
    metrics: str | None = None


@dataclass(frozen=True, slots=True)
class Status:
    status: str  # AVAILABLE | UNAVAILABLE | DISABLED
    version: str
    node_id: str
    uptime: float
    cache: CacheUsage
    counters: Mapping[str, int]
    peers: tuple[Peer, ...]
    listen: Listen
    unavailable_reason: str | None = None  # why the cache cannot be written (UNAVAILABLE)
    # BranchCache's hit ratio by bytes (``branch``: cache + peers, ``local``: cache, each over
    # all bytes applications got); empty from a daemon that does not report it.
    hit_ratio: Mapping[str, float | None] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Status:
        listen = d["listen"]
        reason = d.get("unavailable_reason")
        return cls(
            status=str(d["status"]),
            version=str(d["version"]),
            node_id=str(d["node_id"]),
            uptime=float(d["uptime"]),
            cache=CacheUsage.from_json(d["cache"]),
            counters={
                str(k): int(v) for k, v in d["counters"].items() if isinstance(v, int | float)
            },
            hit_ratio={
                str(k): None if v is None else float(v)
                for k, v in (d.get("hit_ratio") or {}).items()
                if v is None or isinstance(v, int | float)
            },
            peers=tuple(Peer.from_json(p) for p in d["peers"]),
            listen=Listen(
                str(listen["socket"]), listen.get("peers"), listen.get("tcp"), listen.get("metrics")
            ),
            unavailable_reason=None if reason is None else str(reason),
        )

    def counter(self, name: str) -> int:
        """A counter, 0 when the daemon does not report it."""
        return self.counters.get(name, 0)


@dataclass(frozen=True, slots=True)
class Publication:
    id: str
    size: int
    version: int
    algorithm: str
    segments: int
    created: float
    uid: int | None = None  # the owner (publication ids are per uid); None from old daemons

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Publication:
        return cls(
            str(d["id"]),
            int(d["size"]),
            int(d["version"]),
            str(d["algorithm"]),
            int(d["segments"]),
            _timestamp(d["created"]),
            None if d.get("uid") is None else int(d["uid"]),
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: STATUS_CHANGED, START_COMPLETE, PEER_ACCEPTED, SHUTDOWN_COMPLETE."""

    name: str
    data: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ReadResult:
    offset: int  # absolute offset where the read started
    data: bytes
    read_id: str
    from_peers: int = 0  # bytes of data that came from peers (the rest: the local cache)


@dataclass(frozen=True, slots=True)
class AddDataResult:
    offset: int
    length: int
    verified: int  # verified and cached now
    held: int  # kept until content information covers it


@contextlib.contextmanager
def malformed() -> Iterator[None]:
    """A daemon answer we cannot read is a service failure, not a crash."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ServiceUnavailable(f"malformed answer from peerdistd: {exc!r}") from exc


def error_from(status: int, body: bytes) -> ApiError:
    """The ``ApiError`` for a non-2xx answer (``{"error": NAME, "message": ...}``)."""
    doc: Any = None
    with contextlib.suppress(ValueError):
        doc = json.loads(body)
    if not isinstance(doc, dict):
        doc = {}
    cls = API_ERRORS.get(str(doc.get("error"))) or _STATUS_ERRORS.get(status)
    if cls is None:
        return ServiceUnavailable(f"unexpected HTTP {status} from peerdistd: {body[:200]!r}")
    message = str(doc.get("message") or "")
    if cls is MissingData or cls is Timeout:
        with malformed():
            return cls(int(doc["offset"]), int(doc["length"]), message)
    return cls(message)
