"""The hosted cache's offer intake (MS-PCHC server role).

v1.0 offers arrive over HTTPS on their own listener (:class:`OfferServer`, port 443 by
default); v2.0 offers arrive over plain HTTP on the PCCRR port, where the retrieval server
routes them here by path ([MS-PCHC] 2.1; PROTOCOLS.md 4). Each offer is answered at once by
the sans-IO ``proto.pchc_server``; what it says to pull goes to the :class:`Puller`. A
malformed offer gets no answer: the connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Final

from peerdistd.net.hosted_cache_pull import Puller, PullStats, UnverifiedSink, VerifiedSink
from peerdistd.net.http11 import HeadCache, RequestHead, http_date, parse_request_head
from peerdistd.net.http11_server import Refusal, ServerConnection
from peerdistd.proto import pchc, pchc_server
from peerdistd.proto.pchc_server import Verdict

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT: Final = 15.0  # a request must arrive whole within this (as for PCCRR)
MAX_CONNECTIONS: Final = 1024  # concurrent offer connections; past it: busy (503)
_MAX_LOGGED: Final = 1024
_NOT_FOUND: Final[Refusal] = (404, "", b"")
_NOT_ALLOWED: Final[Refusal] = (405, "", b"Allow: POST\r\n")


class _Holdings:
    """Held blocks, verified or kept encrypted: what an offer need not bring again."""

    def __init__(self, verified: VerifiedSink, unverified: UnverifiedSink | None) -> None:
        self.verified, self.unverified = verified, unverified

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        held = self.verified.held_blocks(segment_id)
        if held or self.unverified is None:
            return held
        return self.unverified.held_blocks(segment_id)


class OfferIntake:
    """Answers offers of both versions and hands their pulls to the puller."""

    def __init__(self, puller: Puller) -> None:
        self.puller = puller
        self.stats: PullStats = puller.stats
        self._holdings = _Holdings(puller.verified, puller.unverified)
        self._logged: set[str] = set()

    def answer(
        self, conn: ServerConnection, body: bytes | bytearray, version: int
    ) -> tuple[int, bytes | bytearray, bytes]:
        self.stats.offers += 1
        reply = pchc_server.respond(body, version, self._holdings)
        if reply.verdict is Verdict.DROP:
            self.stats.offers_dropped += 1
            self.log_remote(conn.peer(), reply.reason)
            conn.drop()  # 3.2.5: malformed messages get no answer
            return 400, b"", b""
        if reply.pulls:
            self.puller.submit(conn.peer(), reply.pulls)
        return 200, reply.body, b""

    def log_remote(self, peer: str, reason: str) -> None:
        """Each offerer's bad offer logged once, then quietly (STYLE.md principle 5)."""
        if peer in self._logged:
            log.debug("offer from %s dropped: %s", peer, reason)
            return
        if len(self._logged) >= _MAX_LOGGED:
            self._logged.clear()
        self._logged.add(peer)
        log.warning("offer from %s dropped: %s (further ones logged at debug)", peer, reason)


class OfferServer:
    """The v1.0 listener: POST ``/C574AC30-5794-4AEE-B1BB-6651C5315029`` over TLS.

    The :class:`http11_server.Handler` of its connections; an async context manager.
    """

    max_body: Final = pchc.MAX_REQUEST_SIZE

    def __init__(
        self, intake: OfferIntake, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> None:
        self.intake = intake
        self._host, self._port, self._ssl = host, port, ssl_context
        self.upload_timeout = UPLOAD_TIMEOUT
        self.parse_head = HeadCache(parse_request_head)
        self._server: asyncio.Server | None = None
        self._connections: set[ServerConnection] = set()
        self._active = 0

    async def __aenter__(self) -> OfferServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerConnection(self), self._host, self._port, ssl=self._ssl, backlog=128
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            conn.abort()
        await server.wait_closed()

    @property
    def port(self) -> int:
        return self._port

    def check(self, head: RequestHead) -> Refusal | None:
        if pchc.route(head.path.decode("latin-1")) != 1:
            return _NOT_FOUND
        if head.method != b"POST":
            return _NOT_ALLOWED
        return None

    def take_slot(self, head: RequestHead) -> int:
        self._active += 1
        return 1

    def answer_slots(self, head: RequestHead, held: int) -> int:
        return held

    def release_slot(self, taken: int) -> None:
        self._active -= 1

    def answer(
        self, conn: ServerConnection, body: bytes | bytearray, *, busy: bool
    ) -> tuple[int, bytes | bytearray, bytes]:
        return self.intake.answer(conn, body, 1)

    def http_date(self) -> bytes:
        return http_date(time.time())

    def log_remote(self, peer: str, reason: str) -> None:
        self.intake.log_remote(peer, reason)

    def opened(self, conn: ServerConnection) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            conn.abort()
            return
        self._connections.add(conn)

    def closed(self, conn: ServerConnection) -> None:
        self._connections.discard(conn)
