"""Every failure the client sees becomes a peerdistd.errors class; no aiohttp error escapes."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from peerdistd import errors
from peerdistd.api.client import PeerDistClient, default_socket_path
from peerdistd.api.client_models import error_from

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE = {"handle": "h1", "complete": True, "version": 1, "range": None, "size": None}


@contextlib.asynccontextmanager
async def daemon(handler: Handler) -> AsyncIterator[PeerDistClient]:
    """A one-handler fake daemon on a Unix socket, and a client of it."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    folder = tempfile.mkdtemp(prefix="pde", dir="/tmp")
    try:
        await web.UnixSite(runner, f"{folder}/api.sock").start()
        async with PeerDistClient(f"{folder}/api.sock") as client:
            yield client
    finally:
        await runner.cleanup()
        shutil.rmtree(folder)


def answer(status: int, body: Any) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if isinstance(body, bytes):
            return web.Response(status=status, body=body)
        return web.json_response(body, status=status)

    return handler


@pytest.mark.parametrize("name", sorted(errors.API_ERRORS))
async def test_each_error_name_raises_its_class(name: str) -> None:
    cls = errors.API_ERRORS[name]
    body = {"error": name, "message": f"it is {name}", "offset": 131072, "length": 65536}
    async with daemon(answer(cls.status, body)) as client:
        with pytest.raises(errors.ApiError) as caught:
            await client.status()
    assert type(caught.value) is cls
    assert caught.value.message == f"it is {name}"
    if isinstance(caught.value, errors.MissingData | errors.Timeout):
        assert (caught.value.offset, caught.value.length) == (131072, 65536)


async def test_read_errors_reach_the_caller_with_their_range() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/contents":
            return web.json_response(STATE, status=201)
        body = {"error": "MISSING_DATA", "message": "", "offset": 0, "length": 100}
        return web.json_response(body, status=424)

    async with daemon(handler) as client:
        handle = await client.open_content(b"CI")
        with pytest.raises(errors.MissingData) as caught:
            await handle.stream_read()
    assert (caught.value.offset, caught.value.length) == (0, 100)


@pytest.mark.parametrize(
    ("status", "body", "expected", "text"),
    [
        (404, b"not json", errors.InvalidHandle, "INVALID_HANDLE"),
        (429, {"error": "SOMETHING_NEW", "message": "m"}, errors.StreamLimitReached, "m"),
        (500, b"<html>oops</html>", errors.ServiceUnavailable, "unexpected HTTP 500"),
        (424, {"error": "MISSING_DATA", "message": "no range"}, errors.ServiceUnavailable, "malf"),
        (200, b"{not json", errors.ServiceUnavailable, "malformed answer"),
        (200, {"status": "AVAILABLE"}, errors.ServiceUnavailable, "malformed answer"),
    ],
)
async def test_odd_answers_still_map_to_our_errors(
    status: int, body: Any, expected: type[errors.ApiError], text: str
) -> None:
    async with daemon(answer(status, body)) as client:
        with pytest.raises(expected, match=text) as caught:
            await client.status()
    assert type(caught.value) is expected


async def test_read_without_offset_header_is_a_service_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/v1/contents":
            return web.json_response(STATE, status=201)
        return web.Response(body=b"data")

    async with daemon(handler) as client:
        handle = await client.open_content(b"CI")
        with pytest.raises(errors.ServiceUnavailable, match="PeerDist-Offset"):
            await handle.stream_read()
        with pytest.raises(errors.ServiceUnavailable, match="PeerDist-Available"):
            await handle.available()


async def test_no_daemon_names_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    async with PeerDistClient(path) as client:
        with pytest.raises(errors.ServiceUnavailable) as caught:
            await client.status()
    assert str(caught.value) == (
        f"cannot reach peerdistd at {path}: No such file or directory — is it running?"
    )
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)


async def test_dropped_connection_is_a_service_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    async with daemon(handler) as client:
        with pytest.raises(
            errors.ServiceUnavailable, match="closed the connection before answering"
        ) as caught:
            await client.peers()
    assert "Error(" not in str(caught.value)  # a sentence, not an exception's repr


async def test_closing_a_handle_the_daemon_already_closed_is_quiet() -> None:
    closes = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal closes
        if request.method == "DELETE":
            closes += 1
            return web.json_response({"error": "INVALID_HANDLE", "message": "gone"}, status=404)
        return web.json_response(STATE, status=201)

    async with daemon(handler) as client, await client.open_content(b"CI"):
        pass
    assert closes == 1


def test_error_from_is_pure() -> None:
    err = error_from(504, b'{"error": "TIMEOUT", "message": "slow", "offset": 5, "length": 6}')
    assert isinstance(err, errors.Timeout)
    assert (err.offset, err.length, err.message) == (5, 6, "slow")
    assert isinstance(error_from(403, b""), errors.AccessDenied)
    assert error_from(403, b"").message == "ACCESS_DENIED"


def test_default_socket_path(tmp_path: Path) -> None:
    assert default_socket_path({"PEERDISTD_SOCKET": "/a.sock"}) == Path("/a.sock")
    assert default_socket_path({"PEERDISTD_DAEMON_SOCKET": "/b.sock"}) == Path("/b.sock")
    # The socket this user's own daemon would bind, when there is one ...
    env = {"RUNTIME_DIRECTORY": str(tmp_path), "XDG_RUNTIME_DIR": "/nonexistent"}
    (tmp_path / "api.sock").touch()
    assert default_socket_path(env) == tmp_path / "api.sock"
    # ... else the system service's.
    (tmp_path / "api.sock").unlink()
    assert default_socket_path(env) == Path("/run/peerdistd/api.sock")
