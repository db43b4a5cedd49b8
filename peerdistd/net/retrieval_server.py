"""The MS-PCCRR retrieval server: aiohttp moving bytes to and from the sans-IO responder.

POST ``/116B50EB-ECE2-41ac-8429-9F9E963361B7/``, one message per request, keep-alive, no
Content-Type needed (PROTOCOLS.md 2.1). The response body is built once, with the block
encrypted straight into it, and written as is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from types import TracebackType
from typing import Final

from aiohttp import web

from peerdistd.net.types import BUSY_HEADER, BlockSource
from peerdistd.proto.pccrr import MAGIC_PATH, MAX_REQUEST_SIZE
from peerdistd.proto.pccrr_server import ReplyKind, RetrievalResponder

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT: Final = 15.0  # [MS-PCCRR] 3.2.2 server upload timer (<14>)
DEFAULT_UPLOAD_LIMIT: Final = 64  # 2.5: 64 on a peer, 1024 on a hosted cache
_MAX_LOGGED_PEERS: Final = 1024


class RetrievalServer:
    """Serves blocks of ``source`` to peers; an async context manager."""

    def __init__(
        self,
        source: BlockSource,
        host: str,
        port: int = 0,
        *,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        on_served: Callable[[int], object] | None = None,
        upload_timeout: float = UPLOAD_TIMEOUT,
        allow_plaintext: bool = False,
    ) -> None:
        self._responder = RetrievalResponder(source, allow_plaintext=allow_plaintext)
        self._host, self._port = host, port
        self._upload_limit = upload_limit
        self._on_served = on_served
        self._upload_timeout = upload_timeout
        self._active = 0
        self._active_changed = asyncio.Event()
        self._logged: set[str] = set()
        self._runner: web.ServerRunner | None = None

    async def __aenter__(self) -> RetrievalServer:
        # aiohttp's low-level server: one path, one method, no router or middleware to pay for.
        server = web.Server(self._handle, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except BaseException:
            await self._runner.cleanup()
            raise
        self._port = int(self._runner.addresses[0][1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def upload_limit(self) -> int:
        """Concurrent uploads before peers get the busy answer; changeable at run time."""
        return self._upload_limit

    @upload_limit.setter
    def upload_limit(self, value: int) -> None:
        self._upload_limit = value

    @property
    def active_uploads(self) -> int:
        """Requests being served now (the Active Client Count of [MS-PCCRR] 3.2.1)."""
        return self._active

    async def wait_uploads(self, count: int) -> None:
        """Return once exactly ``count`` uploads are active (for draining and for tests)."""
        while self._active != count:
            await self._active_changed.wait()

    def _count_upload(self, delta: int) -> None:
        self._active += delta
        self._active_changed.set()  # wake every waiter, then arm a fresh event
        self._active_changed = asyncio.Event()

    @property
    def open_connections(self) -> int:
        server = None if self._runner is None else self._runner.server
        return 0 if server is None else len(server.connections)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path != MAGIC_PATH:  # 2.1: exact case, trailing slash
            return web.Response(status=404)
        if request.method != "POST":
            return web.Response(status=405, headers={"Allow": "POST"})
        # Cap before reading a byte of the body (2.2: requests are at most 98304 bytes).
        if (request.content_length or 0) > MAX_REQUEST_SIZE:
            self._log_remote(request, f"{request.content_length}-byte request refused")
            return web.Response(status=413)
        busy = self._active >= self._upload_limit
        if not busy:
            self._count_upload(1)
        response: web.StreamResponse | None = None
        try:
            async with asyncio.timeout(self._upload_timeout):
                body = await _read_capped(request)
                if body is None:
                    self._log_remote(request, "chunked request over the size cap")
                    return web.Response(status=413)
                reply = self._responder.respond(body, busy=busy)
                if reply.kind is ReplyKind.DROP:
                    self._log_remote(request, reply.reason)
                    return web.Response(status=400)
                response = web.StreamResponse()
                response.content_length = len(reply.body)
                if reply.kind is ReplyKind.BUSY:
                    response.headers[BUSY_HEADER] = "1"
                await response.prepare(request)
                await response.write(reply.body)  # aiohttp sends the headers along with it
                await response.write_eof()
        except TimeoutError:
            self._log_remote(request, "upload timer expired")
            if response is None:
                return web.Response(status=408)
            if request.transport is not None:  # a half-sent answer: the connection is spent
                request.transport.abort()
            return response
        finally:
            if not busy:
                self._count_upload(-1)
        if reply.block_bytes and self._on_served is not None:
            self._on_served(reply.block_bytes)
        return response

    def _log_remote(self, request: web.BaseRequest, reason: str) -> None:
        """Log a peer's bad request once per peer, then quietly (STYLE.md principle 5)."""
        peer = request.remote or "?"
        if peer in self._logged:
            log.debug("PCCRR request from %s refused: %s", peer, reason)
            return
        if len(self._logged) >= _MAX_LOGGED_PEERS:
            self._logged.clear()
        self._logged.add(peer)
        log.warning(
            "PCCRR request from %s refused: %s (further ones logged at debug)", peer, reason
        )


async def _read_capped(request: web.BaseRequest) -> bytes | None:
    """The request body, or None if it grows past MAX_REQUEST_SIZE (chunked uploads)."""
    if request.content_length is not None:
        try:
            return await request.content.readexactly(request.content_length)
        except asyncio.IncompleteReadError as exc:
            return exc.partial  # the peer went away mid-body; the parser will refuse it
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_REQUEST_SIZE:
            return None
    return bytes(body)
