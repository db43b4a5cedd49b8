"""The MS-PCCRR retrieval server: HTTP/1.1 connections moving bytes to and from the responder.

POST ``/116B50EB-ECE2-41ac-8429-9F9E963361B7/``, one message per request, keep-alive, no
Content-Type needed (PROTOCOLS.md 2.1). :mod:`http11_server` frames the requests and writes
the answers; this module decides: path, method, size cap, upload slots, and the answer, whose
body is built once with the block encrypted straight into it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Protocol

from peerdistd.net.http11 import HeadCache, RequestHead, http_date, parse_request_head
from peerdistd.net.http11_server import Answer, Refusal, ServerConnection
from peerdistd.net.types import BUSY_HEADER, BlockSource
from peerdistd.proto import pchc
from peerdistd.proto.pccrr import MAGIC_PATH, MAX_REQUEST_SIZE, RUN_LIMIT, RUN_PATH
from peerdistd.proto.pccrr_server import Reply, ReplyKind, RetrievalResponder, SealedSource

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT: Final = 15.0  # [MS-PCCRR] 3.2.2 server upload timer (<14>)
DEFAULT_UPLOAD_LIMIT: Final = 64  # 2.5: 64 on a peer, 1024 on a hosted cache
SHUTDOWN_TIMEOUT: Final = 1.0  # how long requests in progress may finish on exit
_MAX_LOGGED_PEERS: Final = 1024
_MAGIC: Final = MAGIC_PATH.encode()
_RUN: Final = RUN_PATH.encode()  # our extension: runs of blocks per exchange (pccrr.RUN_PATH)
_BUSY_LINE: Final = f"{BUSY_HEADER}: 1\r\n".encode()
_NOT_FOUND: Final[Refusal] = (404, "", b"")
_NOT_ALLOWED: Final[Refusal] = (405, "", b"Allow: POST\r\n")


class OfferAnswerer(Protocol):
    """A hosted cache's intake of MS-PCHC v2.0 offers, which share the PCCRR port."""

    def answer(
        self, conn: ServerConnection, body: bytes | bytearray, version: int
    ) -> tuple[int, bytes | bytearray, bytes]: ...


class RetrievalServer:
    """Serves blocks of ``source`` to peers; an async context manager.

    It is the :class:`http11_server.Handler` of its connections.
    """

    max_body: Final = MAX_REQUEST_SIZE  # 2.2: requests are at most 98304 bytes

    def __init__(
        self,
        source: BlockSource,
        host: str,
        port: int = 0,
        *,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        on_served: Callable[[int], object] | None = None,
        on_served_to: Callable[[str, int], object] | None = None,
        upload_timeout: float = UPLOAD_TIMEOUT,
        allow_plaintext: bool = False,
        sealed: SealedSource | None = None,
        offers: OfferAnswerer | None = None,
    ) -> None:
        self._responder = RetrievalResponder(source, allow_plaintext=allow_plaintext, sealed=sealed)
        self._offers = offers  # [MS-PCHC] 2.1: v2.0 offers come to this port, by path
        self._host, self._port = host, port
        self._upload_limit = upload_limit
        self._on_served = on_served
        self._on_served_to = on_served_to  # (peer "ip:port", block bytes) per block served
        self.upload_timeout = upload_timeout
        self._active = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._logged: set[str] = set()
        self._server: asyncio.Server | None = None
        self._connections: set[ServerConnection] = set()
        self._all_gone: asyncio.Future[None] | None = None
        self.parse_head = HeadCache(parse_request_head)
        self._date_second = -1
        self._date = b""

    async def __aenter__(self) -> RetrievalServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: ServerConnection(self), self._host, self._port, backlog=128
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
        if self._connections:
            self._all_gone = asyncio.get_running_loop().create_future()
            for conn in list(self._connections):
                conn.shut_down()
            try:
                await asyncio.wait_for(asyncio.shield(self._all_gone), SHUTDOWN_TIMEOUT)
            except TimeoutError:
                for conn in list(self._connections):
                    conn.abort()
                await self._all_gone
        await server.wait_closed()

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
        """Upload slots taken now (the Active Client Count of [MS-PCCRR] 3.2.1): one per
        request being served, RUN_LIMIT for a run (:meth:`take_slot`)."""
        return self._active

    async def wait_uploads(self, count: int) -> None:
        """Return once exactly ``count`` upload slots are taken (for draining and tests)."""
        while self._active != count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    # the Handler of the connections

    def check(self, head: RequestHead) -> Refusal | None:
        if head.path not in (_MAGIC, _RUN) and not self._is_offer(head.path):  # 2.1: exact case
            return _NOT_FOUND
        if head.method != b"POST":
            return _NOT_ALLOWED
        return None

    def _is_offer(self, path: bytes) -> bool:
        # PROTOCOLS.md 4: case-insensitive, with or without the trailing slash.
        return self._offers is not None and pchc.route(path.decode("latin-1")) == 2

    def take_slot(self, head: RequestHead) -> int:
        if self._active >= self._upload_limit:
            return 0
        self._count_upload(1)
        return 1

    def answer_slots(self, head: RequestHead, held: int) -> int:
        # A run answer carries up to RUN_LIMIT blocks, so while it is made and sent it holds
        # as many upload slots as that many single-block requests would ([MS-PCCRR]
        # 3.2.5.2-3: the limit is on uploads). Counted as one, 64 runs (64 MiB) could be
        # under way at once; on a loaded host the last of them came after the askers'
        # timers, and honest peers were banned as stalled or trickling (docs/benchmarks.md,
        # ten nodes at once). Answered busy instead, an asker waits for a slot to free. The
        # rest is taken only once the body is in: a peer sending run heads slowly holds one
        # slot per connection, as for any request, not a run's worth.
        weight = min(RUN_LIMIT, self._upload_limit)
        if not held or head.path != _RUN or held >= weight:
            return held
        if self._active + weight - held > self._upload_limit:
            self._count_upload(-held)
            return 0
        self._count_upload(weight - held)
        return weight

    def release_slot(self, taken: int) -> None:
        self._count_upload(-taken)

    def answer(
        self, conn: ServerConnection, body: bytes | bytearray, *, busy: bool
    ) -> tuple[int, bytes | bytearray, bytes]:
        path = conn.request_path
        if path == _RUN:
            reply = self._responder.respond_run(body, busy=busy)
        elif self._offers is not None and path != _MAGIC:
            return self._offers.answer(conn, body, 2)
        else:
            reply = self._responder.respond(body, busy=busy)
        return self._answered(conn, reply)

    def answer_later(
        self, conn: ServerConnection, body: bytes | bytearray, busy: bool
    ) -> Awaitable[Answer] | None:
        """A run of blocks (RUN_PATH) is read, checked and encrypted on a worker thread: on
        the event loop that work (AES-CBC and SHA-256, ~100 us per 64 KiB block here) kept
        every other request and connection waiting, one core at most (docs/benchmarks.md)."""
        if conn.request_path != _RUN:
            return None
        job = self._responder.run_job(body, busy=busy)
        return None if job is None else self._later(conn, job)

    async def _later(self, conn: ServerConnection, job: Callable[[], Reply]) -> Answer:
        reply = await asyncio.get_running_loop().run_in_executor(None, job)
        return self._answered(conn, reply)

    def _answered(self, conn: ServerConnection, reply: Reply) -> Answer:
        if reply.block_bytes and self._on_served is not None:
            self._on_served(reply.block_bytes)
        if reply.block_bytes and self._on_served_to is not None:
            self._on_served_to(conn.peer(), reply.block_bytes)
        if reply.kind is ReplyKind.DROP:
            self.log_remote(conn.peer(), reply.reason)
            return 400, b"", b""
        return 200, reply.body, _BUSY_LINE if reply.kind is ReplyKind.BUSY else b""

    def opened(self, conn: ServerConnection) -> None:
        self._connections.add(conn)

    def closed(self, conn: ServerConnection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    def _count_upload(self, delta: int) -> None:
        self._active += delta
        if self._waiters:  # wake every waiter; each checks the count again
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def http_date(self) -> bytes:
        now = time.time()
        if int(now) != self._date_second:
            self._date_second, self._date = int(now), http_date(now)
        return self._date

    def log_remote(self, peer: str, reason: str) -> None:
        """Log a peer's bad request once per peer, then quietly (STYLE.md principle 5)."""
        if peer in self._logged:
            log.debug("PCCRR request from %s refused: %s", peer, reason)
            return
        if len(self._logged) >= _MAX_LOGGED_PEERS:
            self._logged.clear()
        self._logged.add(peer)
        log.warning(
            "PCCRR request from %s refused: %s (further ones logged at debug)", peer, reason
        )
