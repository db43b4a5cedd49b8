"""The PeerDist application loop over the local API, as ``peerdist fetch`` runs it.

The loop is the SDK's (:mod:`peerdistd.api.fetch_loop`): several block reads at once, each
piece the daemon reports missing fetched from the origin with a MissingDataRequest
([MS-PCCRTP] 3.1; what iPXE sends) and added back, until the whole content is written. This
module gives it the origin requests with the CLI's failure reasons.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import BinaryIO

import aiohttp

from peerdistd.api.client import DEFAULT_READ_MAX, PeerDistClient
from peerdistd.api.fetch_loop import DEFAULT_WORKERS, fetch_loop, pieces_of, segments_of
from peerdistd.api.fetch_loop import origin_range as sdk_origin_range
from peerdistd.cli.failures import origin_reason, transport_reason

__all__ = ["ORIGIN_CHUNK", "FetchSummary", "ProgressCallback", "fetch", "origin_range"]

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes written so far, total or None) as a fetch goes on."""

ORIGIN_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FetchSummary:
    size: int  # bytes written
    from_cache: int
    from_peers: int
    from_origin: int
    origin_requests: int
    seconds: float
    peerdist: bool = True  # False: the origin sent plain bytes, nothing went through peerdistd
    content_info_bytes: int = 0  # content information got from the origin (MS-PCCRTP)
    note: str = ""  # why it was not PeerDist, when it was not


async def origin_range(
    session: aiohttp.ClientSession, url: str, offset: int, length: int, chunk: int = ORIGIN_CHUNK
) -> AsyncIterator[bytes]:
    """The SDK's checked origin range, with failures worded for a person (cli.failures)."""
    async for data in sdk_origin_range(
        session,
        url,
        offset,
        length,
        chunk,
        unreachable=origin_reason,
        interrupted=transport_reason,
    ):
        yield data


async def fetch(
    client: PeerDistClient,
    content_information: bytes,
    origin: str,
    out: BinaryIO,
    *,
    timeout_ms: int | None = None,
    progress: ProgressCallback | None = None,
    read_max: int = DEFAULT_READ_MAX,
    workers: int = DEFAULT_WORKERS,
) -> FetchSummary:
    """Get the content through peerdistd, filling what it lacks from ``origin``; write to out
    (the SDK's fetch loop, :func:`peerdistd.api.fetch_loop.fetch_loop`, with ``workers``)."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    handle = await client.open_content(content_information, immediate=True, whole=True)
    async with handle, aiohttp.ClientSession(timeout=timeout) as origin_session:
        if not handle.complete:
            await handle.complete_content_information()
        counts = await fetch_loop(
            handle,
            origin,
            out,
            session=origin_session,
            origin_get=origin_range,
            workers=workers,
            timeout_ms=timeout_ms,
            progress=progress,
            read_max=read_max,
            piece_bounds=pieces_of(content_information),
            block_bounds=segments_of(content_information),
        )
        # No ClientFlushContent here: it removes the content from the cache (DESIGN.md), and
        # what came from the origin is what this node should now serve to the branch.
    return FetchSummary(
        counts.size,
        counts.from_cache,
        counts.from_peers,
        counts.from_origin,
        counts.origin_requests,
        time.monotonic() - started,
    )
