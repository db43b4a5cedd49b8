"""A content handle: one application's open content (PeerDist ClientOpenContent)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from peerdistd import errors
from peerdistd.engine.held import HeldData
from peerdistd.engine.view import ContentView


@dataclass(slots=True)
class Tally:
    """What one handle's application got, by source (logged when the handle closes)."""

    reads: int = 0
    from_cache: int = 0
    from_peers: int = 0
    from_origin: int = 0  # bytes the application added (ClientAddData)

    def read(self, length: int, from_peers: int) -> None:
        self.reads += 1
        self.from_peers += from_peers
        self.from_cache += length - from_peers


@dataclass(eq=False, slots=True)
class ContentHandle:
    """Mutable state of one open content; owned by the engine, keyed by ``id``."""

    id: str
    owner_uid: int
    ci_bytes: bytearray  # kept only while the content information is incomplete
    view: ContentView | None
    stream_offset: int
    held: HeldData
    last_used: float
    flags: frozenset[str] = frozenset()
    closed: bool = False
    # Stream reads are served first-in first-out: asyncio.Lock wakes waiters in order.
    stream_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Add-data and added content information touch the held bytes: one at a time.
    add_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: set[asyncio.Task[Any]] = field(default_factory=set)
    active_reads: int = 0
    tally: Tally = field(default_factory=Tally)

    def info(self) -> dict[str, object]:
        """The JSON the API answers for open / add content information."""
        view = self.view
        return {
            "handle": self.id,
            "complete": bool(view and view.complete),
            "version": view.version if view else None,
            "range": {"offset": view.start, "length": view.size} if view else None,
            "size": view.size if view else None,
        }

    def summary(self, why: str) -> str:
        """One log line: what the application got from where, ``why`` the handle closed."""
        t, size = self.tally, self.view.size if self.view else 0
        return (
            f"handle {self.id} of uid {self.owner_uid} {why}: {t.reads} reads of a "
            f"{size}-byte content; bytes from cache {t.from_cache}, from peers "
            f"{t.from_peers}, from origin {t.from_origin}"
        )


def may_grow(view: ContentView) -> bool:
    """Whether more content information may still be added to the handle.

    V2 content information has no segment count: one that ends on a chunk boundary is
    complete as it stands, yet more chunks may follow ([MS-PCCRC] 2.4).
    """
    return not view.complete or view.version == 2


def loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def check_flags(flags: Iterable[str], allowed: frozenset[str]) -> frozenset[str]:
    flag_set = frozenset(f for f in flags if f)
    unknown = flag_set - allowed
    if unknown:
        raise errors.InvalidParameter(
            f"unknown flag(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}"
        )
    return flag_set


def ready(h: ContentHandle) -> ContentView:
    if h.view is None:
        raise errors.InvalidParameter("no content information header on this handle yet")
    return h.view
