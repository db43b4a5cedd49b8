"""Errors that reach no handler's own translation: each becomes a documented JSON error.

Three kinds (issue "Errors at every boundary"):

- a request aiohttp's parser refuses (a NUL or a bare CR in a header, a bad chunk size, an
  oversized line...): the client's fault, answered ``400 INVALID_PARAMETER`` and closed;
- any other HTTP error aiohttp raises while a handler reads the request: the same;
- an unexpected exception in a handler (a bug, or a library's assertion): answered
  ``503 SERVICE_UNAVAILABLE`` ("internal error"), never aiohttp's plain-text 500.

Logging is bounded whatever the client sends: a client-caused error is logged once per kind
(no traceback: it is not our bug), an unexpected exception once per distinct site (with its
traceback); repeats within :data:`REPEAT_INTERVAL` are only counted and reported with the
next line logged for that kind.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from peerdistd import errors

log = logging.getLogger("peerdistd.api")

REPEAT_INTERVAL = 60.0  # seconds between two log lines of one kind
KINDS_LIMIT = 1024  # distinct kinds remembered


class RateLimitedLog:
    """Logs a kind of event at most once per interval, saying how many repeats it skipped."""

    def __init__(self, interval: float = REPEAT_INTERVAL) -> None:
        self.interval = interval
        self._seen: dict[object, tuple[float, int]] = {}  # kind -> (last logged, skipped)

    def allow(self, kind: object) -> int | None:
        """None to stay silent; else how many of this kind went unlogged since the last."""
        now = time.monotonic()
        last = self._seen.get(kind)
        if last is not None and now - last[0] < self.interval:
            self._seen[kind] = (last[0], last[1] + 1)
            return None
        if last is None and len(self._seen) >= KINDS_LIMIT:
            self._seen.clear()  # a flood of distinct kinds: forget, keep the bound
        self._seen[kind] = (now, 0)
        return 0 if last is None else last[1]


LIMITER = RateLimitedLog()


def _skipped(n: int) -> str:
    return f" ({n} more like it since the last report)" if n else ""


def client_error(what: str, exc: BaseException) -> errors.InvalidParameter:
    """A request the client got wrong: one log line per kind, then rate-limited."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    # The kind leaves out anything the client chooses (path, bytes): varying them buys no
    # extra log lines.
    skipped = LIMITER.allow(("client", type(exc).__name__))
    if skipped is not None:
        log.warning("bad request (%s): %s%s", what, message, _skipped(skipped))
    return errors.InvalidParameter(f"bad request: {message}")


def internal_error(what: str, exc: BaseException) -> errors.ServiceUnavailable:
    """An exception nobody expected: its traceback once per site, then rate-limited."""
    tb = traceback.extract_tb(exc.__traceback__)
    site = (type(exc).__name__, tb[-1].filename, tb[-1].lineno) if tb else (type(exc).__name__,)
    skipped = LIMITER.allow(("internal", *site))
    if skipped is not None:
        log.error("internal error in %s%s", what, _skipped(skipped), exc_info=exc)
    return errors.ServiceUnavailable(f"internal error ({type(exc).__name__}): {exc}")


DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})
DISK_SQLITE = ("disk is full", "readonly database", "disk I/O error")


def disk_trouble(exc: BaseException) -> str | None:
    """Why the cache's file system refused a write (full, read-only, failing), if that is what
    ``exc`` (or an exception it was raised from) says; None for any other error."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in DISK_ERRNOS:
            return cause.strerror or str(cause)
        if isinstance(cause, sqlite3.OperationalError) and any(
            text in str(cause) for text in DISK_SQLITE
        ):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return None


def json_error(exc: errors.ApiError) -> web.Response:
    return web.json_response(exc.to_json(), status=exc.status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ALWAYS_ALLOWED = frozenset({"/v1/status", "/v1/openapi.json"})


def errors_middleware(
    enabled: Callable[[], bool], write_failed: Callable[[str], None]
) -> Middleware:
    """Every error a handler raises, as its JSON answer; ``write_failed(reason)`` is told
    when a write found the cache's file system full or read-only (degraded, not dead)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        what = f"{request.method} {request.path}"
        try:
            if not enabled() and request.path not in ALWAYS_ALLOWED:
                raise errors.NotSupported("PeerDist is disabled by policy (daemon.enabled = false)")
            return await handler(request)
        except errors.ApiError as exc:
            return json_error(exc)
        except web.HTTPException as exc:
            if exc.status == 413:
                return json_error(errors.InvalidParameter(f"request body too large: {exc.text}"))
            if exc.status in (404, 405):
                # RFC 9110 15.5.6: a 405 names the methods the route has.
                allow = exc.headers.get("Allow") if exc.status == 405 else None
                return web.json_response(
                    {"error": "INVALID_PARAMETER", "message": f"{what}: {exc.reason}"},
                    status=exc.status,
                    headers={"Allow": allow} if allow is not None else None,
                )
            if exc.status < 400:
                raise
            if exc.status < 500:
                return json_error(client_error(what, exc))
            return json_error(internal_error(what, exc))
        except errors.LocalError as exc:
            reason = disk_trouble(exc)
            if reason is None:
                return json_error(internal_error(what, exc))
            # Say why in status at once, refuse this write, keep serving reads.
            write_failed(f"cache not writable: {reason}")
            return json_error(
                errors.ServiceUnavailable(f"the cache cannot be written right now: {reason}")
            )
        except HttpProcessingError as exc:  # a body aiohttp cannot parse (bad chunk, ...)
            return json_error(client_error(what, exc))
        except (asyncio.CancelledError, ConnectionError):
            raise  # the client went away: nobody to answer
        except Exception as exc:  # a bug or an unexpected library error: logged once per site
            return json_error(internal_error(what, exc))

    return middleware


class ApiRequestHandler(RequestHandler):
    """aiohttp's connection handler with JSON errors and bounded logging."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if request.writer.output_size > 0:  # the response began: only closing is left
            raise ConnectionError("response already started; closing the connection")
        what = f"{request.method} {request.path}" if status >= 500 else "HTTP parser"
        if status < 500:
            api: errors.ApiError = client_error(what, exc or ValueError(message or "bad request"))
        else:
            api = internal_error(what, exc or RuntimeError(message or "internal error"))
        resp = json_error(api)
        resp.force_close()
        return resp

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException):
            internal_error("the API connection", exc)
        elif LIMITER.allow(("log", str(args[0]) if args else "")) is not None:
            log.error(*args)


class ApiServer(web.Server):
    """aiohttp's low-level server, its connections handled by :class:`ApiRequestHandler`."""

    def __call__(self) -> RequestHandler:
        return ApiRequestHandler(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose server answers parser and unexpected errors in JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        return ApiServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **server._kwargs,  # what the application configured (debug, access log, ...)
        )
