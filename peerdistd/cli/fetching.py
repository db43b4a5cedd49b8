"""The PeerDist application loop over the local API, as ``peerdist fetch`` runs it.

Stream-read from the daemon; get each range it reports missing from the origin with a
MissingDataRequest ([MS-PCCRTP] 3.1; what iPXE sends), a slice at a time, asking the daemon
again between slices; add it back, go on until NO_MORE.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import BinaryIO

import aiohttp

from peerdistd.api.client import DEFAULT_READ_MAX, AddDataResult, ContentHandle, PeerDistClient
from peerdistd.cli.failures import origin_reason, transport_reason
from peerdistd.errors import (
    MissingData,
    NoMore,
    PeerDistError,
    RemoteError,
    ServiceUnavailable,
    Timeout,
    TransferInterrupted,
)
from peerdistd.proto.pccrtp import missing_data_headers

ProgressCallback = Callable[[int, int | None], None]
"""Called with (bytes written so far, total or None) as a fetch goes on."""

ORIGIN_CHUNK = 1 << 20
# At most this much of a missing range is taken from the origin before the daemon is asked
# again: nodes that start together then share what each fetched instead of all taking the
# whole content from the WAN.
ORIGIN_SLICE = 4 << 20
# A range the origin cut short is asked again (its rest only) up to this many times in a row,
# waiting ORIGIN_BACKOFF seconds before the first retry and twice as long before each next.
ORIGIN_RETRIES = 3
ORIGIN_BACKOFF = 0.5
# Answers worth asking again: the origin is busy or failing for now (RFC 9110 15.5.9, 15.6).
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")


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
    session: aiohttp.ClientSession, url: str, offset: int, length: int
) -> AsyncIterator[bytes]:
    """The bytes ``[offset, offset+length)`` of ``url``, checked, in chunks of ORIGIN_CHUNK."""
    last = offset + length - 1
    # [MS-PCCRTP] 3.1: an identity request saying MissingDataRequest=true, never together
    # with Accept-Encoding: peerdist (PROTOCOLS.md, section 5; what iPXE sends per block).
    headers = {"Range": f"bytes={offset}-{last}", **missing_data_headers()}
    where = f"origin {url} (bytes {offset}-{last})"
    got = 0
    try:
        async with session.get(url, headers=headers) as resp:
            if resp.status != 206:
                kind = TransferInterrupted if resp.status in _TRANSIENT_STATUS else RemoteError
                raise kind(f"{where}: HTTP {resp.status} {resp.reason}, expected 206")
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or (int(match[1]), int(match[2])) != (offset, last):
                got_range = resp.headers.get("Content-Range")
                raise RemoteError(f"{where}: answered Content-Range {got_range!r}")
            if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise RemoteError(f"{where}: answered Content-Encoding, expected identity")
            while got < length:
                chunk = await resp.content.read(min(ORIGIN_CHUNK, length - got))
                if not chunk:
                    break
                got += len(chunk)
                yield chunk
            if got != length:
                raise TransferInterrupted(
                    f"{where}: sent a body of the wrong length ({got} of {length} bytes)"
                )
            if await resp.content.read(1):
                raise RemoteError(f"{where}: sent a body of the wrong length (too long)")
    except aiohttp.ClientConnectorError as exc:  # no origin there at all: say so at once
        raise RemoteError(f"{where}: {origin_reason(exc)}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Reset, cut mid-body, timed out: a second try may well pass.
        raise TransferInterrupted(f"{where}: {transport_reason(exc)}") from exc


async def _add_from_origin(
    handle: ContentHandle, offset: int, chunks: AsyncIterator[bytes], out: BinaryIO
) -> AsyncIterator[int]:
    """Add each origin chunk to the daemon, then write it; yields the bytes done.

    The next chunk is read from the origin while the daemon verifies the previous one.
    """
    pending: asyncio.Task[AddDataResult] | None = None
    pending_chunk = b""
    try:
        async for chunk in chunks:
            if pending is not None:
                await pending
                out.write(pending_chunk)
                yield len(pending_chunk)
            pending = asyncio.create_task(handle.add_data(offset, chunk))
            pending_chunk = chunk
            offset += len(chunk)
        if pending is not None:
            await pending
            out.write(pending_chunk)
            yield len(pending_chunk)
            pending = None
    finally:
        if pending is not None:  # the origin failed: stop (or collect) the add in flight
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, PeerDistError):
                await pending


async def fetch(
    client: PeerDistClient,
    content_information: bytes,
    origin: str,
    out: BinaryIO,
    *,
    timeout_ms: int | None = None,
    progress: ProgressCallback | None = None,
    read_max: int = DEFAULT_READ_MAX,
) -> FetchSummary:
    """Get the content through peerdistd, filling what it lacks from ``origin``; write to out."""
    started = time.monotonic()
    from_cache = from_peers = from_origin = requests = 0
    expected: int | None = None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    handle = await client.open_content(content_information, immediate=True)
    async with handle, aiohttp.ClientSession(timeout=timeout) as origin_session:
        if not handle.complete:
            await handle.complete_content_information()
        expected = handle.range_offset

        def advance(offset: int, n: int) -> None:
            nonlocal expected
            # Stream reads are served in order, each taking the next range (DESIGN.md).
            if expected is not None and offset != expected:
                raise ServiceUnavailable(f"peerdistd read at offset {offset}, expected {expected}")
            if n <= 0:
                raise ServiceUnavailable(f"peerdistd returned an empty range at {offset}")
            expected = offset + n

        def took(data: bytes, peers: int) -> None:
            nonlocal from_cache, from_peers
            out.write(data)
            from_peers += peers
            from_cache += len(data) - peers
            if progress:
                progress(from_cache + from_peers + from_origin, handle.size)

        async def from_origin_slice(offset: int, length: int) -> None:
            """The range from the origin; a cut is asked again from where it broke off."""
            nonlocal from_origin, requests
            done = failures = 0
            for attempt in itertools.count(1):
                requests += 1
                start = offset + done
                chunks = origin_range(origin_session, origin, start, length - done)
                try:
                    async for n in _add_from_origin(handle, start, chunks, out):
                        done += n
                        from_origin += n
                        if progress:
                            progress(from_cache + from_peers + from_origin, handle.size)
                    return
                except TransferInterrupted as exc:
                    # Bounded: ORIGIN_RETRIES in a row without a byte of progress.
                    failures = 1 if offset + done > start else failures + 1
                    if failures > ORIGIN_RETRIES:
                        raise TransferInterrupted(
                            f"{exc}; gave up after {attempt} attempts — try again later"
                        ) from exc
                    await asyncio.sleep(ORIGIN_BACKOFF * 2 ** (failures - 1))

        async def fill_gap(offset: int, length: int) -> None:
            """A range the daemon reported missing: take a slice of it from the origin, then
            ask the daemon again for the rest (block reads), since other nodes of the branch
            may have fetched it meanwhile. Only what is still missing goes to the origin."""
            end = offset + length
            pos = offset
            take = min(ORIGIN_SLICE, end - pos)
            while pos < end:
                if take:
                    await from_origin_slice(pos, take)
                    pos += take
                    take = 0
                    continue
                try:
                    read = await handle.block_read(
                        pos, min(read_max, end - pos), timeout_ms=timeout_ms
                    )
                except (MissingData, Timeout) as gap:
                    take = min(ORIGIN_SLICE, gap.length, end - pos)
                    continue
                if read.offset != pos or not read.data:
                    raise ServiceUnavailable(f"peerdistd block read at {pos} answered badly")
                took(read.data, read.from_peers)
                pos += len(read.data)

        while True:
            try:
                read = await handle.stream_read(read_max, timeout_ms=timeout_ms)
            except NoMore:
                break
            except (MissingData, Timeout) as gap:
                advance(gap.offset, gap.length)
                await fill_gap(gap.offset, gap.length)
                continue
            advance(read.offset, len(read.data))
            took(read.data, read.from_peers)
        # No ClientFlushContent here: it removes the content from the cache (DESIGN.md), and
        # what came from the origin is what this node should now serve to the branch.
    return FetchSummary(
        from_cache + from_peers + from_origin,
        from_cache,
        from_peers,
        from_origin,
        requests,
        time.monotonic() - started,
    )
