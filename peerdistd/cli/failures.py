"""How the ``peerdist`` command tells a person what went wrong: one line, one exit code.

Dependencies' exceptions (aiohttp, OSError) are turned into words here, at the CLI's boundary
(after httpcore's ``map_exceptions``): no ``repr`` of a foreign exception reaches the user.
"""

from __future__ import annotations

import asyncio
import os
import sys

import aiohttp

from peerdistd.errors import ApiError, ConfigError, PeerDistError

__all__ = ["SOCKET_HELP", "describe", "origin_reason", "report", "transport_reason", "warn"]

PROG = "peerdist"
SOCKET_HELP = (
    "the daemon's API socket (default: $PEERDISTD_SOCKET, else this user's own daemon's if it "
    "is running, else the system service's /run/peerdistd/api.sock)"
)


def transport_reason(exc: BaseException) -> str:
    """What an aiohttp or socket failure means, as a phrase (no advice, no exception names)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        # asyncio words a refusal "Connect call failed (...)": the errno says it plainly (a
        # resolver's error has a negative errno and its own words, kept).
        return f"cannot connect to {exc.host}:{exc.port}: {_strerror(exc.os_error)}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection before it answered"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the connection broke before the whole body arrived"
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return "the server stopped answering (timed out)"
    if isinstance(exc, aiohttp.InvalidURL):
        return f"not a usable URL: {exc.url}"
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "too many redirects"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}".rstrip()
    if isinstance(exc, OSError):
        return _strerror(exc)
    if isinstance(exc, aiohttp.ClientError):
        # Every other aiohttp error: its own text, which is a sentence, never its repr.
        return str(exc) or "the HTTP connection failed"
    return str(exc) or type(exc).__name__


def origin_reason(exc: BaseException) -> str:
    """:func:`transport_reason` of a failure talking to an origin, with advice if it helps."""
    reason = transport_reason(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"{reason} — check the URL and that the origin is up"
    return reason


def _strerror(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    # asyncio rewords errors ("error while attempting to bind on address ..."): the errno's
    # own words are shorter and the same everywhere.
    code = exc.errno or 0
    return f"{where}{os.strerror(code) if code > 0 else exc.strerror or exc}"


def describe(exc: BaseException) -> str:
    """The one line the user sees for ``exc``."""
    if isinstance(exc, ApiError):
        # Transport failures already read as a sentence; the daemon's errors get their NAME.
        transport = isinstance(exc.__cause__, aiohttp.ClientError | OSError)
        named = transport or exc.name in exc.message
        return exc.message if named else f"{exc.message} ({exc.name})"
    if isinstance(exc, ConfigError):
        return f"configuration: {exc}"
    if isinstance(exc, PeerDistError):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 text ({exc.reason} at byte {exc.start})"
    return transport_reason(exc)


def report(exc: BaseException, code: int = 1) -> int:
    """Print ``exc`` as ``peerdist: error: ...`` on stderr; return the exit code."""
    print(f"{PROG}: error: {describe(exc)}", file=sys.stderr)
    return code


def warn(message: str) -> None:
    """One ``peerdist: warning: ...`` line on stderr."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)
