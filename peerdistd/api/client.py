"""Async Python client of the peerdistd local API (DESIGN.md, "The local API (v1)").

Every failure surfaces as a :mod:`peerdistd.errors` ``ApiError``: the daemon's JSON errors map
by NAME, transport failures become ``ServiceUnavailable`` naming the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import stat
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self
from urllib.parse import quote

import aiohttp

from peerdistd.api.client_models import (
    AddDataResult,
    CacheUsage,
    CacheVerifyReport,
    Event,
    Listen,
    Peer,
    Publication,
    ReadResult,
    Status,
    error_from,
    malformed,
)
from peerdistd.api.client_sockets import (
    SYSTEM_SOCKET,
    default_socket_path,
    socket_candidates,
    unreachable,
)
from peerdistd.errors import ApiError, InvalidHandle, InvalidParameter, ServiceUnavailable

if TYPE_CHECKING:
    from peerdistd.api.fetch_loop import FetchCounts

__all__ = [
    "SYSTEM_SOCKET",
    "AddDataResult",
    "CacheUsage",
    "CacheVerifyReport",
    "ContentHandle",
    "Event",
    "Listen",
    "Peer",
    "PeerDistClient",
    "Publication",
    "ReadResult",
    "Status",
    "default_socket_path",
    "socket_candidates",
]

DEFAULT_READ_MAX = 1 << 20
READ_FLAGS = frozenset({"fail_blocked", "shutdown_on_fail", "indicate_peer_accept", "no_claim"})
_UPLOAD_CHUNK = 1 << 20
_OCTETS = {"Content-Type": "application/octet-stream"}


class PeerDistClient:
    """A connection pool to one daemon; use as ``async with PeerDistClient() as client``."""

    def __init__(self, socket_path: str | Path | None = None, *, base_url: str | None = None):
        self.socket_path: Path | None = None
        if base_url is not None:
            self._base = base_url.rstrip("/")
            self.where = self._base
        else:
            self.socket_path = Path(socket_path) if socket_path else default_socket_path()
            self._base = "http://localhost"
            self.where = str(self.socket_path)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector: aiohttp.BaseConnector = (
                aiohttp.UnixConnector(path=str(self.socket_path))
                if self.socket_path is not None
                else aiohttp.TCPConnector()
            )
            # No total timeout: reads wait up to their own timeout_ms, events never end.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
            )
        return self._session

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; a non-2xx answer raises its ApiError, transport errors raise 503."""
        if data is not None:
            headers = {**_OCTETS, **(headers or {})}
        if isinstance(data, bytes) and len(data) > _UPLOAD_CHUNK:
            data = io.BytesIO(data)  # aiohttp streams a file-like body instead of one write
        try:
            session = self._open_session()
            async with session.request(
                method, self._base + path, params=params, data=data, headers=headers
            ) as resp:
                if not 200 <= resp.status < 300:
                    raise error_from(resp.status, await resp.read())
                yield resp
        except aiohttp.ClientConnectorError as exc:
            raise ServiceUnavailable(unreachable(self.where, exc.os_error)) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise ServiceUnavailable(
                f"peerdistd at {self.where} closed the connection before answering "
                "(did it stop or restart?)"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ServiceUnavailable(
                f"connection to peerdistd at {self.where} failed: {reason}"
            ) from exc

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        async with self._request(method, path, **kw) as resp:
            with malformed():
                return json.loads(await resp.read())

    async def _empty(self, method: str, path: str, **kw: Any) -> None:
        async with self._request(method, path, **kw) as resp:
            await resp.read()

    async def status(self) -> Status:
        doc = await self._json("GET", "/v1/status")
        with malformed():
            return Status.from_json(doc)

    async def events(self) -> AsyncIterator[Event]:
        """Server-sent events; the first is STATUS_CHANGED with the current status."""
        async with self._request("GET", "/v1/events") as resp:
            name, data = "message", []
            async for raw in resp.content:
                with malformed():
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line:
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "event":
                            name = value
                        elif field == "data":
                            data.append(value)
                        continue  # other fields and ':' comments are ignored (SSE spec)
                    if data:
                        payload = json.loads("\n".join(data))
                        event = Event(name, payload if isinstance(payload, dict) else {})
                        name, data = "message", []
                        yield event
                    name = "message"

    async def publish(
        self,
        data: bytes | AsyncIterable[bytes] | Path,
        *,
        id: str | None = None,
        version: int = 1,
        hash: str = "sha256",
        uid: int | None = None,
    ) -> Publication:
        """Publish content (streamed); re-publishing an id replaces it.

        Ids are per uid; ``uid`` (root only) publishes in another uid's namespace.
        """
        params = {"version": str(version), "hash": hash}
        if id is not None:
            params["id"] = id
        if uid is not None:
            params["uid"] = str(uid)
        body: bytes | AsyncIterable[bytes]
        headers: dict[str, str] = {}
        if isinstance(data, Path):
            try:
                handle = await asyncio.to_thread(data.open, "rb")
                info = os.fstat(handle.fileno())
            except OSError as exc:
                raise InvalidParameter(f"cannot read {data}: {exc.strerror or exc}") from exc
            body = _file_chunks(handle, 4 << 20)
            if stat.S_ISREG(info.st_mode):
                # A known length spares both sides chunked transfer coding. A pipe (say
                # <(cmd)) has st_size 0 and no length until its end: it goes chunked.
                headers["Content-Length"] = str(info.st_size)
        else:
            body = data
        doc = await self._json(
            "POST", "/v1/publications", params=params, data=body, headers=headers
        )
        with malformed():
            return Publication.from_json(doc)

    async def publications(self, *, uid: int | None = None) -> list[Publication]:
        """The caller's publications (root: every uid's, or ``uid``'s if given)."""
        doc = await self._json("GET", "/v1/publications", params=_owner(uid))
        with malformed():
            return [Publication.from_json(p) for p in doc["publications"]]

    async def publication(self, pub_id: str, *, uid: int | None = None) -> Publication:
        """The caller's publication ``pub_id`` (root: ``uid``'s if given)."""
        doc = await self._json("GET", f"/v1/publications/{_seg(pub_id)}", params=_owner(uid))
        with malformed():
            return Publication.from_json(doc)

    async def content_information(
        self,
        pub_id: str,
        *,
        offset: int | None = None,
        length: int | None = None,
        version: int | None = None,
        uid: int | None = None,
    ) -> bytes:
        """The publication's content information, for the range when offset/length are given
        (root: of ``uid``'s publication if given)."""
        asked = (("offset", offset), ("length", length), ("version", version), ("uid", uid))
        params = {k: str(v) for k, v in asked if v is not None}
        path = f"/v1/publications/{_seg(pub_id)}/content-information"
        async with self._request("GET", path, params=params) as resp:
            return await resp.read()

    async def unpublish(self, pub_id: str, *, uid: int | None = None) -> None:
        """Withdraw the caller's publication ``pub_id`` (root: ``uid``'s if given)."""
        await self._empty("DELETE", f"/v1/publications/{_seg(pub_id)}", params=_owner(uid))

    async def open_content(
        self, content_information: bytes, *, immediate: bool = False, whole: bool = False
    ) -> ContentHandle:
        """Open content; add further parts of its content information on the handle.
        ``immediate``: look for peers now; ``whole``: the application will read all of it,
        so the daemon may fetch what other nodes finish before it is asked (a peerdistd
        extension, docs/api.md)."""
        flags = [f for f, on in (("immediate", immediate), ("whole", whole)) if on]
        params = {"flags": ",".join(flags)} if flags else {}
        doc = await self._json("POST", "/v1/contents", params=params, data=content_information)
        with malformed():
            return ContentHandle(self, doc)

    async def cache(self) -> CacheUsage:
        doc = await self._json("GET", "/v1/cache")
        with malformed():
            return CacheUsage.from_json(doc)

    async def flush_cache(self) -> int:
        """Empty the block cache but publications' blocks (root only); the bytes freed."""
        return (await self.flush_cache_report())[0]

    async def flush_cache_report(self, include_publications: bool = False) -> tuple[int, int]:
        """Empty the block cache (root only): (bytes freed, bytes kept for publications).

        Publications keep their blocks unless ``include_publications``.
        """
        path = "/v1/cache?publications=true" if include_publications else "/v1/cache"
        doc = await self._json("DELETE", path)
        with malformed():
            return int(doc["freed"]), int(doc.get("kept_for_publications", 0))

    async def verify_cache(self) -> CacheVerifyReport:
        """Re-hash the whole block cache, dropping what fails (root only)."""
        doc = await self._json("POST", "/v1/cache/verify")
        with malformed():
            return CacheVerifyReport.from_json(doc)

    async def peers(self) -> list[Peer]:
        doc = await self._json("GET", "/v1/peers")
        with malformed():
            return [Peer.from_json(p) for p in doc["peers"]]

    async def openapi(self) -> dict[str, Any]:
        doc = await self._json("GET", "/v1/openapi.json")
        return dict(doc)

    async def fetch_to(
        self,
        content_information: bytes,
        origin: str,
        out: IO[bytes],
        *,
        workers: int = 4,
        timeout_ms: int | None = None,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> FetchCounts:
        """The PeerDist fetch loop: write the content to ``out``, reading through the daemon
        with ``workers`` reads at once and fetching what the branch lacks from ``origin``
        (an HTTP URL serving ranges). See :mod:`peerdistd.api.fetch_loop`."""
        from peerdistd.api import fetch_loop as loop  # noqa: PLC0415 (it imports us)

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
        handle = await self.open_content(content_information, immediate=True, whole=True)
        async with handle, aiohttp.ClientSession(timeout=timeout) as session:
            if not handle.complete:
                await handle.complete_content_information()
            return await loop.fetch_loop(
                handle,
                origin,
                out,
                session=session,
                workers=workers,
                timeout_ms=timeout_ms,
                progress=progress,
                piece_bounds=loop.pieces_of(content_information),
                block_bounds=loop.segments_of(content_information),
            )


class ContentHandle:
    """An open content handle; ``async with`` closes it on exit."""

    def __init__(self, client: PeerDistClient, state: Mapping[str, Any]) -> None:
        self._client = client
        self.handle = str(state["handle"])
        self._path = f"/v1/contents/{_seg(self.handle)}"
        self._closed = False
        self._update(state)

    def _update(self, state: Mapping[str, Any]) -> None:
        rng = state.get("range")
        size = state.get("size")
        version = state.get("version")
        self.complete = bool(state["complete"])
        self.version: int | None = None if version is None else int(version)
        self.range_offset: int | None = None if rng is None else int(rng["offset"])
        self.range_length: int | None = None if rng is None else int(rng["length"])
        self.size: int | None = None if size is None else int(size)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        # A handle closed by the daemon (shutdown_on_fail) is already gone; and a failing
        # close must not hide the exception that is leaving the block.
        with contextlib.suppress(InvalidHandle, *((ApiError,) if e is not None else ())):
            await self.close()

    async def _state(self, path: str, data: bytes | None = None) -> None:
        doc = await self._client._json("POST", self._path + path, data=data)
        with malformed():
            self._update(doc)

    async def add_content_information(self, part: bytes) -> None:
        await self._state("/content-information", part)

    async def complete_content_information(self) -> None:
        """INVALID_DATA if the parts added do not form a complete content information."""
        await self._state("/content-information/complete")

    async def stream_read(
        self,
        max: int = DEFAULT_READ_MAX,
        *,
        timeout_ms: int | None = None,
        flags: Iterable[str] = (),
    ) -> ReadResult:
        """Read at the stream offset; MISSING_DATA/TIMEOUT name the range to get elsewhere."""
        return await self._read("/stream-read", {}, max, timeout_ms, flags)

    async def block_read(
        self,
        offset: int,
        max: int = DEFAULT_READ_MAX,
        *,
        timeout_ms: int | None = None,
        flags: Iterable[str] = (),
    ) -> ReadResult:
        """Read at an absolute offset; the stream offset does not move."""
        return await self._read("/block-read", {"offset": str(offset)}, max, timeout_ms, flags)

    async def available(self) -> int:
        """Consecutive bytes in the local cache at the stream offset (``max=0``)."""
        async with self._client._request(
            "POST", self._path + "/stream-read", params={"max": "0"}
        ) as resp:
            await resp.read()
            with malformed():
                return int(resp.headers["PeerDist-Available"])

    async def _read(
        self,
        path: str,
        params: dict[str, str],
        max: int,
        timeout_ms: int | None,
        flags: Iterable[str],
    ) -> ReadResult:
        flag_list = list(flags)
        if unknown := set(flag_list) - READ_FLAGS:
            raise InvalidParameter(f"unknown read flags: {', '.join(sorted(unknown))}")
        params["max"] = str(max)
        if timeout_ms is not None:
            params["timeout_ms"] = str(timeout_ms)
        if flag_list:
            params["flags"] = ",".join(flag_list)
        async with self._client._request("POST", self._path + path, params=params) as resp:
            data = await resp.read()
            with malformed():
                offset = int(resp.headers["PeerDist-Offset"])
                from_peers = int(resp.headers.get("PeerDist-From-Peers", "0"))
            return ReadResult(offset, data, resp.headers.get("PeerDist-Read-Id", ""), from_peers)

    async def add_data(self, offset: int, data: bytes) -> AddDataResult:
        """Add bytes got from the origin; a block failing verification raises InvalidData."""
        doc = await self._client._json(
            "PUT", self._path + "/data", params={"offset": str(offset)}, data=data
        )
        with malformed():
            return AddDataResult(
                int(doc["offset"]), int(doc["length"]), int(doc["verified"]), int(doc["held"])
            )

    async def flush(self) -> None:
        await self._client._empty("POST", self._path + "/flush")

    async def close(self) -> None:
        """Close the handle (pending reads end with OPERATION_ABORTED); idempotent."""
        if not self._closed:
            self._closed = True
            await self._client._empty("DELETE", self._path)


def _seg(value: str) -> str:
    """A path segment, percent-encoded."""
    return quote(value, safe="")


async def _file_chunks(handle: IO[bytes], size: int = _UPLOAD_CHUNK) -> AsyncIterator[bytes]:
    """Read a file in chunks off the event loop."""
    try:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk
    finally:
        handle.close()


def _owner(uid: int | None) -> dict[str, str]:
    """The ``uid`` query parameter of the publication routes, when one is given."""
    return {} if uid is None else {"uid": str(uid)}
