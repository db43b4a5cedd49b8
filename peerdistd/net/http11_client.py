"""One client-side HTTP/1.1 keep-alive connection to a peer, one exchange at a time.

A :class:`asyncio.BufferedProtocol`: the response head is read into a small scratch buffer,
and a Content-Length body straight into a buffer of its exact size, so the socket's bytes are
copied once. Every failure is a :class:`PeerError` set on the exchange's future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final, cast

from peerdistd.errors import DecodeError
from peerdistd.net.http11 import HEAD_END, MAX_HEAD, ChunkedDecoder, HeadCache, ResponseHead
from peerdistd.net.types import PeerError, PeerProtocolError, PeerUnreachable

_SCRATCH: Final = MAX_HEAD  # a head must fit; a small first read leaves the body to its buffer


class Answer:
    """A complete response: its status, fields and body."""

    __slots__ = ("body", "fields", "status")

    def __init__(self, status: int, fields: dict[bytes, bytes], body: bytearray) -> None:
        self.status = status
        self.fields = fields
        self.body = body


class StaleConnection(PeerUnreachable):
    """A kept-alive connection closed before any byte of the answer: safe to ask again."""


class ClientConnection(asyncio.BufferedProtocol):
    """Carries one exchange at a time; ``reusable`` once an answer has been read cleanly."""

    def __init__(self, peer: str, max_body: int, heads: HeadCache[ResponseHead]) -> None:
        self.peer = peer
        self._parse_head = heads
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.reusable = False  # idle, open, and the last answer was read to its end
        self.exchanges = 0
        self.idle_since = 0.0
        self.on_lost: Callable[[ClientConnection], None] | None = None  # set by the pool
        self._scratch = bytearray(_SCRATCH)
        self._scratch_view = memoryview(self._scratch)
        self._filled = 0
        self._future: asyncio.Future[Answer] | None = None
        self._body: bytearray | None = None  # a Content-Length body being filled
        self._body_view: memoryview | None = None
        self._got = 0
        self._head_status = 0
        self._head_fields: dict[bytes, bytes] = {}
        self._chunks: ChunkedDecoder | None = None
        self._to_close: bytearray | None = None  # a body that runs to the end of the connection
        self._keep_alive = False

    def exchange(self, request: bytes) -> asyncio.Future[Answer]:
        """Send ``request`` (a whole HTTP request); the future gets the answer or a PeerError."""
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        if self.transport is None or not self.reusable:
            # The peer hung up before we could ask (uvloop delivers its FIN to eof_received
            # before the task that made the connection runs again): its fault, not a bug here.
            future.set_exception(PeerUnreachable(self.peer, "connection closed before the request"))
            return future
        self._future = future
        self.reusable = False
        self.exchanges += 1
        self.transport.write(request)
        return future

    def fail(self, error: PeerError) -> None:
        """End the exchange with ``error`` and drop the connection (timeouts, cancellation)."""
        self._finish_error(error)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.reusable = True

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body_view is not None:
            return self._body_view[self._got :]
        return self._scratch_view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._body is not None:
            self._got += nbytes
            if self._got == len(self._body):
                self._body_done()
            return
        self._filled += nbytes
        if self._future is None or self._future.done():
            self.fail(PeerProtocolError(self.peer, "bytes sent with no request outstanding"))
        elif self._chunks is not None or self._to_close is not None:
            self._more_body()
        else:
            self._more_head()

    def eof_received(self) -> bool:
        if self._to_close is not None and self._future is not None:
            self._complete(self._to_close)
        self.reusable = False  # the peer is done with this connection
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._future is not None and not self._future.done():
            error: PeerError
            why = f": {exc}" if exc else ""
            if self._body is not None or self._chunks is not None:
                error = PeerProtocolError(self.peer, "answer cut short")
            elif self._filled or self.exchanges == 1:
                error = PeerUnreachable(self.peer, f"connection closed before the answer{why}")
            else:
                error = StaleConnection(self.peer, f"kept-alive connection closed{why}")
            error.__cause__ = exc
            self._finish_error(error)
        if self.on_lost is not None:
            self.on_lost(self)

    # parsing

    def _more_head(self) -> None:
        stop = self._scratch.find(HEAD_END, 0, self._filled)
        if stop < 0:
            if self._filled == len(self._scratch):
                self.fail(PeerProtocolError(self.peer, f"answer head over {MAX_HEAD} bytes"))
            return
        try:
            head = self._parse_head(bytes(self._scratch_view[:stop]))
        except DecodeError as exc:
            self.fail(PeerProtocolError(self.peer, f"malformed HTTP answer: {exc}"))
            return
        start = stop + len(HEAD_END)
        rest = self._filled - start
        if 100 <= head.status < 200:  # RFC 9110 15.2: interim answers come before the real one
            self._scratch[:rest] = self._scratch_view[start : self._filled]
            self._filled = rest
            self._more_head()
            return
        if head.status != 200:
            self.fail(PeerProtocolError(self.peer, f"HTTP {head.status}"))
            return
        self._head_status, self._head_fields, self._keep_alive = 200, head.fields, head.keep_alive
        length = head.content_length
        if length is not None:
            if length > self.max_body:
                self.fail(PeerProtocolError(self.peer, f"answer of {length} bytes is too big"))
            elif rest > length:
                self.fail(PeerProtocolError(self.peer, "more bytes than the answer's length"))
            else:
                body = bytearray(length)
                body[:rest] = self._scratch_view[start : self._filled]
                self._filled = 0
                if rest == length:
                    self._complete(body)
                else:
                    self._body, self._body_view, self._got = body, memoryview(body), rest
            return
        if head.chunked:
            self._chunks = ChunkedDecoder(self.max_body)
        else:
            self._to_close = bytearray()
        self._scratch[:rest] = self._scratch_view[start : self._filled]
        self._filled = rest
        self._more_body()

    def _more_body(self) -> None:
        data = bytes(self._scratch_view[: self._filled])
        self._filled = 0
        if self._to_close is not None:
            self._to_close += data
            if len(self._to_close) > self.max_body:
                self.fail(PeerProtocolError(self.peer, "answer too big"))
            return
        assert self._chunks is not None
        try:
            used = self._chunks.feed(data)
        except DecodeError as exc:
            problem = "answer too big" if self._chunks.oversized else f"bad chunked answer: {exc}"
            self.fail(PeerProtocolError(self.peer, problem))
            return
        if self._chunks.done:
            if used != len(data):
                self.fail(PeerProtocolError(self.peer, "more bytes than the answer's length"))
                return
            self._complete(self._chunks.body)

    def _body_done(self) -> None:
        assert self._body is not None and self._body_view is not None
        body = self._body
        self._body = self._body_view = None
        self._complete(body)

    def _complete(self, body: bytearray) -> None:
        future = self._future
        self._reset()
        self.reusable = self._keep_alive and self.transport is not None
        if not self._keep_alive:
            self.close()
        if future is not None and not future.done():
            future.set_result(Answer(self._head_status, self._head_fields, body))

    def _finish_error(self, error: PeerError) -> None:
        future = self._future
        self._reset()
        self.reusable = False
        if future is not None and not future.done():
            future.set_exception(error)

    def _reset(self) -> None:
        self._future = None
        self._chunks = self._to_close = None
        self._filled = 0
        self._body = self._body_view = None
