"""The server side of one HTTP/1.1 connection, for a handler answering small POSTs.

Requests are framed by the strict codec of :mod:`http11` and answered in order, each in the
callback that completed it (no task per request); the answer's head and body go to the
transport together (one writev). The handler makes every decision about meaning. A handler
may answer a request later (:meth:`DeferringHandler.answer_later`: costly work on a worker
thread); the connection then reads and answers nothing more until that answer is written.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, cast

from peerdistd.errors import DecodeError
from peerdistd.net.http11 import (
    CONTINUE,
    HEAD_END,
    MAX_HEAD,
    ChunkedDecoder,
    RequestHead,
    check_request_start,
    response_head,
)

KEEPALIVE_TIMEOUT: Final = 75.0  # an idle connection is closed after 75-150 s (aiohttp: 75 s)
_CLOSE_LINE: Final = b"Connection: close\r\n"
_KEEP_LINE: Final = b"Connection: keep-alive\r\n"  # HTTP/1.0 peers must be told (RFC 9112 9.3)

Refusal = tuple[int, str, bytes]  # status, reason to log ("" for none), extra field lines
Answer = tuple[int, bytes | bytearray, bytes]  # status, body, extra field lines
Later = Callable[["ServerConnection", bytes | bytearray, bool], Awaitable[Answer] | None]

log = logging.getLogger(__name__)


class Handler(Protocol):
    """What a connection asks of its server."""

    upload_timeout: float  # for a request to arrive whole, or an answer to drain

    @property
    def max_body(self) -> int:
        """Larger request bodies are refused (413) before a byte of them is read."""
        ...

    def parse_head(self, raw: bytes) -> RequestHead: ...

    def check(self, head: RequestHead) -> Refusal | None:
        """A refusal for a head that is not served here (wrong path, method), or None."""
        ...

    def take_slot(self, head: RequestHead) -> int:
        """Take an upload slot for a request just begun: 1, or 0 when none is free (it is
        answered busy)."""
        ...

    def answer_slots(self, head: RequestHead, held: int) -> int:
        """The slots a request whose body is in holds while it is answered (a request for
        many blocks may weigh more than the one it arrived with): ``held``, more, or 0 when
        the more are not free (``held`` is then given back and it is answered busy)."""
        ...

    def release_slot(self, taken: int) -> None:
        """Give back the ``taken`` slots of one request."""
        ...

    def answer(
        self, conn: ServerConnection, body: bytes | bytearray, *, busy: bool
    ) -> tuple[int, bytes | bytearray, bytes]:
        """``(status, body, extra field lines)`` for a whole request body."""
        ...

    def http_date(self) -> bytes: ...

    def log_remote(self, peer: str, reason: str) -> None: ...

    def opened(self, conn: ServerConnection) -> None: ...

    def closed(self, conn: ServerConnection) -> None: ...


class DeferringHandler(Handler, Protocol):
    """A handler that answers some requests later."""

    def answer_later(
        self, conn: ServerConnection, body: bytes | bytearray, busy: bool
    ) -> Awaitable[Answer] | None:
        """The answer to come, for a request whose answer is costly to make; None: answer
        it now (:meth:`Handler.answer`)."""
        ...


class ServerConnection(asyncio.Protocol):
    """One peer's connection: requests in order, each answered as soon as its body is in.

    An upload slot is held from a request's head until its answer is written; an answer the
    peer is slow to take (the transport paused writing) keeps it until the transport drains.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()  # received bytes not yet used
        self._head: RequestHead | None = None  # the request whose body is arriving
        self._chunks: ChunkedDecoder | None = None
        self._slot = 0  # the handler's upload slots the request in progress holds
        self._continued = False
        self._write_paused = False
        self._closing = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_mark = 0
        self._served = 0
        self._activity = 0
        self._idle_mark = 0
        self._idle: asyncio.TimerHandle | None = None
        self.request_path = b""  # the path of the request being answered
        self._later: Later | None = getattr(handler, "answer_later", None)
        self._deferred: RequestHead | None = None  # a request answered later, in progress

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._handler.opened(self)
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
        self._handler.closed(self)

    # called by the handler

    def shut_down(self) -> None:
        """Close once what was written has gone out and the request in progress is answered."""
        if self._deferred is not None:
            self._deferred = dataclasses.replace(self._deferred, keep_alive=False)
        elif self._head is not None:  # answered with "Connection: close"; nothing after it read
            self._head = dataclasses.replace(self._head, keep_alive=False)
        else:
            self._close()

    def drop(self) -> None:
        """Close without answering the request being answered (a malformed offer, MS-PCHC)."""
        self._close()

    def abort(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    # request handling

    def _serve(self, data: bytes | bytearray) -> int:
        """Answer every complete request in ``data``; how many bytes were used."""
        pos, end = 0, len(data)
        while pos < end and not self._closing and not self._write_paused and not self._deferred:
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
                    self._ask_for_body(head)
                    break
                body: bytes | bytearray = self._chunks.body
            else:
                length = head.content_length or 0
                if end - pos < length:
                    self._ask_for_body(head)
                    break
                body = data[pos : pos + length]
                pos += length
            self._answer(head, body)
        return pos

    def _ask_for_body(self, head: RequestHead) -> None:
        if head.expect_continue and not self._continued:
            self._continued = True  # RFC 9110 10.1.1: the peer waits for this to send the body
            self._write(CONTINUE)

    def _check_start(self, start: bytes) -> None:
        try:
            check_request_start(start)
        except DecodeError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")

    def _start(self, raw: bytes) -> RequestHead | None:
        """Check a request head and take an upload slot; None if it was refused."""
        try:
            head = self._handler.parse_head(raw)
        except DecodeError as exc:
            self._refuse(400, f"malformed HTTP request: {exc}")
            return None
        refusal = self._handler.check(head)
        if refusal is not None:
            self._refuse(*refusal)
            return None
        # A body over the handler's cap is refused before a byte of it is read.
        if head.content_length is not None and head.content_length > self._handler.max_body:
            self._refuse(413, f"{head.content_length}-byte request refused")
            return None
        self._slot = self._handler.take_slot(head)
        if head.content_length is None:
            self._chunks = ChunkedDecoder(self._handler.max_body)
        self._head = head
        return head

    def _answer(self, head: RequestHead, body: bytes | bytearray) -> None:
        self._head, self._chunks, self._continued = None, None, False
        self._served += 1
        self.request_path = head.path  # for a handler that serves several paths
        self._slot = self._handler.answer_slots(head, self._slot)
        later = None if self._later is None else self._later(self, body, not self._slot)
        if later is not None:
            # Nothing more is read or answered until this answer is written (in order).
            self._deferred = head
            assert self._transport is not None
            self._transport.pause_reading()
            task = asyncio.ensure_future(later)
            task.add_done_callback(self._answered_later)
            return
        status, answer, extra = self._handler.answer(self, body, busy=not self._slot)
        if self._closing:  # the handler dropped the connection instead of answering
            self._release_slot()
            return
        self._reply(head, status, answer, extra)
        if not self._write_paused:
            self._release_slot()

    def _answered_later(self, task: asyncio.Future[Answer]) -> None:
        head, self._deferred = self._deferred, None
        if self._closing or head is None:  # gone meanwhile: its slot went with it
            self._release_slot()
            return
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.error("answering a request failed", exc_info=task.exception())
            self._refuse(500)
            return
        self._reply(head, *task.result())
        if self._closing:
            return
        if not self._write_paused:
            self._release_slot()
            assert self._transport is not None
            self._transport.resume_reading()
            if self._buf:
                del self._buf[: self._serve(self._buf)]
        self._arm_timer()

    def _reply(
        self, head: RequestHead, status: int, body: bytes | bytearray, extra: bytes = b""
    ) -> None:
        if not head.keep_alive:
            extra += _CLOSE_LINE
        elif head.http10:
            extra += _KEEP_LINE
        self._write(response_head(status, len(body), self._handler.http_date(), extra), body)
        if not head.keep_alive:
            self._close()

    def _refuse(self, status: int, reason: str = "", extra: bytes = b"") -> None:
        """Answer ``status`` and close: the rest of what the peer sent is not read."""
        if reason:
            self._handler.log_remote(self.peer(), reason)
        self._head = self._chunks = None
        self._release_slot()
        extra += _CLOSE_LINE
        self._write(response_head(status, 0, self._handler.http_date(), extra))
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
            taken, self._slot = self._slot, 0
            self._handler.release_slot(taken)

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
                self._timer = self._loop.call_later(self._handler.upload_timeout, self._expired)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self._closing:
            return
        self._handler.log_remote(self.peer(), "upload timer expired")
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

    def peer(self) -> str:
        name = None if self._transport is None else self._transport.get_extra_info("peername")
        return str(name[0]) if name else "?"
