"""The MS-PCCRR retrieval server: an asyncio Protocol moving bytes to and from the responder.

POST ``/116B50EB-ECE2-41ac-8429-9F9E963361B7/``, one message per request, keep-alive, no
Content-Type needed (PROTOCOLS.md 2.1). The strict codec of :mod:`http11` frames requests;
each is answered in the callback that completed it (no task per request), the head and the
body (the block encrypted straight into it) handed to the transport together, one writev.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, cast

from peerdistd.errors import DecodeError
from peerdistd.net.http11 import (
    CONTINUE,
    HEAD_END,
    MAX_HEAD,
    ChunkedDecoder,
    RequestHead,
    check_request_start,
    http_date,
    parse_request_head,
    response_head,
)
from peerdistd.net.types import BUSY_HEADER, BlockSource
from peerdistd.proto.pccrr import MAGIC_PATH, MAX_REQUEST_SIZE
from peerdistd.proto.pccrr_server import ReplyKind, RetrievalResponder

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT: Final = 15.0  # [MS-PCCRR] 3.2.2 server upload timer (<14>)
DEFAULT_UPLOAD_LIMIT: Final = 64  # 2.5: 64 on a peer, 1024 on a hosted cache
KEEPALIVE_TIMEOUT: Final = 75.0  # an idle connection is closed after 75-150 s (aiohttp: 75 s)
SHUTDOWN_TIMEOUT: Final = 1.0  # how long requests in progress may finish on exit
_MAX_LOGGED_PEERS: Final = 1024
_MAGIC: Final = MAGIC_PATH.encode()
_BUSY_LINE: Final = f"{BUSY_HEADER}: 1\r\n".encode()
_CLOSE_LINE: Final = b"Connection: close\r\n"
_KEEP_LINE: Final = b"Connection: keep-alive\r\n"  # HTTP/1.0 peers must be told (RFC 9112 9.3)


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
        self._waiters: list[asyncio.Future[None]] = []
        self._logged: set[str] = set()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._all_gone: asyncio.Future[None] | None = None
        self._date_second = -1
        self._date = b""

    async def __aenter__(self) -> RetrievalServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), self._host, self._port, backlog=128
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
        """Requests being served now (the Active Client Count of [MS-PCCRR] 3.2.1)."""
        return self._active

    async def wait_uploads(self, count: int) -> None:
        """Return once exactly ``count`` uploads are active (for draining and for tests)."""
        while self._active != count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

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

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if not self._connections and self._all_gone is not None and not self._all_gone.done():
            self._all_gone.set_result(None)

    def _http_date(self) -> bytes:
        now = time.time()
        if int(now) != self._date_second:
            self._date_second, self._date = int(now), http_date(now)
        return self._date

    def _log_remote(self, peer: str, reason: str) -> None:
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


class _Connection(asyncio.Protocol):
    """One peer's connection: requests in order, each answered as soon as its body is in.

    An upload slot is held from a request's head until its answer is written; an answer the
    peer is slow to take (the transport paused writing) keeps it until the transport drains.
    """

    def __init__(self, server: RetrievalServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()  # received bytes not yet used
        self._head: RequestHead | None = None  # the request whose body is arriving
        self._chunks: ChunkedDecoder | None = None
        self._busy = False
        self._slot = False
        self._continued = False
        self._write_paused = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_mark = 0
        self._served = 0
        self._activity = 0
        self._idle_mark = 0
        self._idle: asyncio.TimerHandle | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._server._connections.add(self)
        self._idle = self._loop.call_later(KEEPALIVE_TIMEOUT, self._idle_check)

    def data_received(self, data: bytes) -> None:
        self._activity += 1
        if self._closing:
            return
        if self._buf:
            self._buf += data
            del self._buf[: self._serve(self._buf)]
        else:
            used = self._serve(data)
            if used < len(data) and not self._closing:
                self._buf += data[used:]
        self._arm_timer()

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()  # no new requests until this answer has drained
        self._arm_timer()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._head is None:
            self._release_slot()
        if self._closing or self._transport is None:
            return
        self._transport.resume_reading()
        if self._buf:
            del self._buf[: self._serve(self._buf)]
        self._arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        for handle in (self._timer, self._idle):
            if handle is not None:
                handle.cancel()
        self._timer = self._idle = None
        self._release_slot()
        self._server._forget(self)

    # called by the server

    def shut_down(self) -> None:
        """Close once what was written has gone out and the request in progress is answered."""
        self._buf.clear()  # no request after this one
        if self._head is not None:
            self._head = dataclasses.replace(self._head, keep_alive=False)
        else:
            self._close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    # request handling

    def _serve(self, data: bytes | bytearray) -> int:
        """Answer every complete request in ``data``; how many bytes were used."""
        pos, end = 0, len(data)
        while pos < end and not self._closing and not self._write_paused:
            head = self._head
            if head is None:
                while data.startswith(b"\r\n", pos):  # RFC 9112 2.2: empty lines before one
                    pos += 2
                stop = data.find(HEAD_END, pos, pos + MAX_HEAD)
                if stop < 0:
                    if end - pos >= MAX_HEAD:
                        self._refuse(431, f"request head over {MAX_HEAD} bytes")
                    elif pos < end:
                        self._check_start(bytes(data[pos:end]))
                    break
                head = self._start(bytes(data[pos:stop]))
                pos = stop + len(HEAD_END)
                if head is None:
                    break
            if self._chunks is not None:
                try:
                    pos += self._chunks.feed(data[pos:])
                except DecodeError as exc:
                    self._refuse(413 if self._chunks.oversized else 400, f"chunked body: {exc}")
                    break
                if not self._chunks.done:
                    break
                body: bytes | bytearray = self._chunks.body
            else:
                length = head.content_length or 0
                if end - pos < length:
                    if head.expect_continue and not self._continued:
                        self._continued = True  # RFC 9110 10.1.1: ask for the body
                        self._write(CONTINUE)
                    break
                body = data[pos : pos + length]
                pos += length
            self._answer(head, body)
        return pos

    def _check_start(self, start: bytes) -> None:
        try:
            check_request_start(start)
        except DecodeError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def _start(self, raw: bytes) -> RequestHead | None:
        """Check a request head and take an upload slot; None if it was refused."""
        try:
            head = parse_request_head(raw)
        except DecodeError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")
            return None
        if head.path != _MAGIC:  # 2.1: exact case, trailing slash
            self._refuse(404)
            return None
        if head.method != b"POST":
            self._refuse(405, extra=b"Allow: POST\r\n")
            return None
        # Cap before reading a byte of the body (2.2: requests are at most 98304 bytes).
        if head.content_length is not None and head.content_length > MAX_REQUEST_SIZE:
            self._refuse(413, f"{head.content_length}-byte request refused")
            return None
        server = self._server
        self._busy = server._active >= server._upload_limit
        if not self._busy:
            self._slot = True
            server._count_upload(1)
        if head.content_length is None:
            self._chunks = ChunkedDecoder(MAX_REQUEST_SIZE)
        self._head = head
        return head

    def _answer(self, head: RequestHead, body: bytes | bytearray) -> None:
        server = self._server
        self._head, self._chunks, self._continued = None, None, False
        self._served += 1
        reply = server._responder.respond(body, busy=self._busy)
        if reply.kind is ReplyKind.DROP:
            server._log_remote(self._peer(), reply.reason)
            self._reply(head, 400, b"")
        else:
            self._reply(head, 200, reply.body, _BUSY_LINE if reply.kind is ReplyKind.BUSY else b"")
        if not self._write_paused:
            self._release_slot()
        if reply.block_bytes and server._on_served is not None:
            server._on_served(reply.block_bytes)

    def _reply(
        self, head: RequestHead, status: int, body: bytes | bytearray, extra: bytes = b""
    ) -> None:
        if not head.keep_alive:
            extra += _CLOSE_LINE
        elif head.http10:
            extra += _KEEP_LINE
        self._write(response_head(status, len(body), self._server._http_date(), extra), body)
        if not head.keep_alive:
            self._close()

    def _refuse(self, status: int, reason: str = "", extra: bytes = b"") -> None:
        """Answer ``status`` and close: the rest of what the peer sent is not read."""
        if reason:
            self._server._log_remote(self._peer(), reason)
        self._head = self._chunks = None
        self._release_slot()
        extra += _CLOSE_LINE
        self._write(response_head(status, 0, self._server._http_date(), extra))
        self._close()

    def _write(self, head: bytes, body: bytes | bytearray = b"") -> None:
        assert self._transport is not None
        if body:
            self._transport.writelines((head, body))
        else:
            self._transport.write(head)

    def _close(self) -> None:
        self._closing = True
        self._buf.clear()
        if self._transport is not None:
            self._transport.close()  # sends what was written, then FIN

    def _release_slot(self) -> None:
        if self._slot:
            self._slot = False
            self._server._count_upload(-1)

    # timers

    def _pending(self) -> bool:
        return self._head is not None or bool(self._buf) or self._write_paused

    def _arm_timer(self) -> None:
        """Run the upload timer while a request is incomplete or its answer is stuck."""
        if self._closing:
            return
        if self._pending():
            if self._timer is not None and self._timer_mark != self._served:
                self._timer.cancel()  # a request finished: the next one gets its own 15 s
                self._timer = None
            if self._timer is None:
                self._timer_mark = self._served
                self._timer = self._loop.call_later(self._server._upload_timeout, self._expired)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._closing:
            return
        self._server._log_remote(self._peer(), "upload timer expired")
        if self._write_paused:  # a half-sent answer: the connection is spent
            self.abort()
        else:
            self._refuse(408)

    def _idle_check(self) -> None:
        if self._closing or self._transport is None:
            return
        if self._activity != self._idle_mark or self._pending():
            self._idle_mark = self._activity
            self._idle = self._loop.call_later(KEEPALIVE_TIMEOUT, self._idle_check)
        else:
            self._idle = None
            self._close()

    def _peer(self) -> str:
        name = None if self._transport is None else self._transport.get_extra_info("peername")
        return str(name[0]) if name else "?"
