"""``peerdist fetch URL``: get content information from the origin itself (MS-PCCRTP).

One GET advertising peerdist (PROTOCOLS.md section 5, the headers Windows 8+ and iPXE send).
``Content-Encoding: peerdist`` means the body is content information: the PeerDist loop of
:func:`peerdistd.cli.fetching.fetch` then runs with it against the same URL. Any other answer
is the content itself, streamed straight to the output.
"""

from __future__ import annotations

import dataclasses
import time
from typing import BinaryIO

import aiohttp

from peerdistd.api.client import DEFAULT_READ_MAX, PeerDistClient
from peerdistd.api.fetch_loop import DEFAULT_WORKERS
from peerdistd.cli.failures import origin_reason
from peerdistd.cli.fetching import ORIGIN_CHUNK, FetchSummary, ProgressCallback, fetch
from peerdistd.errors import DecodeError, RemoteError
from peerdistd.proto.pccrc import ContentInformation
from peerdistd.proto.pccrtp import Answer, ProtocolVersion, parse_answer, request_headers

__all__ = ["MAX_CONTENT_INFORMATION", "fetch_url", "plain_download"]

# The daemon takes at most this much too (api/app.py): V1 for ~128 GiB of content.
MAX_CONTENT_INFORMATION = 64 * 1024 * 1024


async def fetch_url(
    client: PeerDistClient,
    url: str,
    out: BinaryIO,
    *,
    version: ProtocolVersion = ProtocolVersion.V1_1,
    timeout_ms: int | None = None,
    progress: ProgressCallback | None = None,
    read_max: int = DEFAULT_READ_MAX,
    workers: int = DEFAULT_WORKERS,
) -> FetchSummary:
    """Ask ``url`` for content information; fetch through peerdistd with it, else plainly."""
    started = time.monotonic()
    # The daemon first: without it, asking the origin to hash the file is wasted work.
    await client.status()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=request_headers(version)) as resp,
        ):
            if resp.status != 200:
                raise RemoteError(f"origin {url}: HTTP {resp.status} {resp.reason}")
            try:
                answer = parse_answer(resp.headers)
            except DecodeError as exc:
                raise RemoteError(f"origin {url}: {exc}") from exc
            if not answer.peerdist:
                size = await _stream(resp, out, progress)
                return FetchSummary(
                    size, 0, 0, size, 1, time.monotonic() - started, False, 0, _why_plain(answer)
                )
            info = await _read_capped(resp, url)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RemoteError(f"origin {url}: {origin_reason(exc)}") from exc
    _check(info, answer, url)
    summary = await fetch(
        client,
        info,
        url,
        out,
        timeout_ms=timeout_ms,
        progress=progress,
        read_max=read_max,
        workers=workers,
    )
    return dataclasses.replace(
        summary, seconds=time.monotonic() - started, content_info_bytes=len(info)
    )


async def plain_download(
    url: str, out: BinaryIO, *, note: str, progress: ProgressCallback | None = None
) -> FetchSummary:
    """One plain GET of ``url`` into ``out``: what a fetch does when peerdistd cannot help."""
    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as resp,
        ):
            if resp.status != 200:
                raise RemoteError(f"origin {url}: HTTP {resp.status} {resp.reason}")
            size = await _stream(resp, out, progress)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise RemoteError(f"origin {url}: {origin_reason(exc)}") from exc
    return FetchSummary(size, 0, 0, size, 1, time.monotonic() - started, False, 0, note)


def _why_plain(answer: Answer) -> str:
    if answer.make_hash_request:  # [MS-PCCRTP] 3.2: hashes are being made, ask again later
        return "the origin is still hashing this content (MakeHashRequest)"
    return "the origin does not offer PeerDist for it"


async def _stream(
    resp: aiohttp.ClientResponse, out: BinaryIO, progress: ProgressCallback | None
) -> int:
    done = 0
    while chunk := await resp.content.read(ORIGIN_CHUNK):
        out.write(chunk)
        done += len(chunk)
        if progress:
            progress(done, resp.content_length)
    if resp.content_length is not None and done != resp.content_length:
        raise RemoteError(f"origin {resp.url}: sent {done} of {resp.content_length} bytes")
    return done


async def _read_capped(resp: aiohttp.ClientResponse, url: str) -> bytes:
    if (resp.content_length or 0) > MAX_CONTENT_INFORMATION:
        raise RemoteError(f"origin {url}: content information of {resp.content_length} bytes")
    body = await resp.content.read(MAX_CONTENT_INFORMATION + 1)
    while len(body) <= MAX_CONTENT_INFORMATION and (more := await resp.content.read(1 << 20)):
        body += more
    if len(body) > MAX_CONTENT_INFORMATION:
        raise RemoteError(f"origin {url}: content information over {MAX_CONTENT_INFORMATION} bytes")
    return body


def _check(info: bytes, answer: Answer, url: str) -> None:
    """The content information must describe the whole content the header says it does."""
    try:
        parsed = ContentInformation.parse(info)
    except DecodeError as exc:
        raise RemoteError(f"origin {url}: its content information does not parse: {exc}") from exc
    if parsed.start != 0:
        raise RemoteError(f"origin {url}: content information starts at {parsed.start}, not 0")
    if answer.content_length is not None and answer.content_length != parsed.length:
        raise RemoteError(
            f"origin {url}: X-P2P-PeerDist says ContentLength={answer.content_length} but the "
            f"content information covers {parsed.length} bytes"
        )
