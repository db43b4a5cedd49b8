"""Ownership by uid (SO_PEERCRED) and bad input on every route, against a real daemon."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.content import BLOCK, content, content_information
from tests.harness import DaemonProcess, start_daemon

NOBODY = 65534


def as_uid(uid: int, method: str, path: str, sock: Path, body: bytes | None = None) -> dict:
    """One HTTP request over the API socket from a forked child running as ``uid``.

    A fork, not a new interpreter: the Python install may sit where another uid cannot read.
    """
    body = body or b""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: peerdistd\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, talk, report, exit without cleanup
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(str(sock))
                conn.sendall(request)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
            os.write(write_end, b"".join(chunks))
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    head, _, payload = raw.partition(b"\r\n\r\n")
    code = int(head.split()[1])
    if b"chunked" in head.lower():
        payload = _unchunk(payload)
    return {"status": code, "body": payload.decode()}


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


@contextlib.contextmanager
def world_traversable_dir() -> Iterator[Path]:
    """A 0755 temporary directory, removed afterwards.

    Not pytest's tmp_path: its parents are 0700, so a second uid could not reach the socket.
    """
    root = Path(tempfile.mkdtemp(prefix="peerdistd-uids-"))
    try:
        root.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_shared_directory_is_removed_afterwards() -> None:
    with world_traversable_dir() as root:
        (root / "state").mkdir()
        assert root.stat().st_mode & 0o777 == 0o755
    assert not root.exists()


@pytest.fixture
def shared_daemon() -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client under a second uid (CI runs as root)")
    with world_traversable_dir() as root:
        d = start_daemon(root, env={"PEERDISTD_DAEMON_SOCKET_MODE": "0666"})
        try:
            yield d
        finally:
            d.stop()
            d.notify.close()


async def test_publications_and_handles_belong_to_their_uid(shared_daemon: DaemonProcess) -> None:
    data = content(2 * BLOCK, seed=11)
    async with shared_daemon.session() as api:
        async with api.post("/v1/publications", params={"id": "roots"}, data=data) as r:
            assert r.status == 201
        async with api.post("/v1/contents", data=content_information(data).to_bytes()) as r:
            handle = (await r.json())["handle"]
    sock = shared_daemon.socket
    # Another uid's publication answers exactly as an absent one (no existence oracle).
    denied = as_uid(NOBODY, "GET", "/v1/publications/roots/content-information", sock)
    assert denied["status"] == 400 and json.loads(denied["body"])["error"] == "INVALID_PARAMETER"
    denied = as_uid(NOBODY, "DELETE", "/v1/publications/roots", sock)
    assert denied["status"] == 400
    other = as_uid(NOBODY, "POST", f"/v1/contents/{handle}/stream-read?timeout_ms=0", sock)
    assert other["status"] == 404 and json.loads(other["body"])["error"] == "INVALID_HANDLE"
    listed = as_uid(NOBODY, "GET", "/v1/publications", sock)
    assert json.loads(listed["body"]) == {"publications": []}
    mine = as_uid(NOBODY, "POST", "/v1/publications?id=nobodys", sock, b"x" * 1000)
    assert mine["status"] == 201
    flush = as_uid(NOBODY, "DELETE", "/v1/cache", sock)
    assert flush["status"] == 403
    async with shared_daemon.session() as api:  # root may manage all
        async with api.get("/v1/publications") as r:
            ids = sorted(p["id"] for p in (await r.json())["publications"])
        assert ids == ["nobodys", "roots"]
        async with api.delete("/v1/publications/nobodys", params={"uid": str(NOBODY)}) as r:
            assert r.status == 204


BAD_REQUESTS = [
    ("POST", "/v1/contents", b"\x00\x01garbage", 422, "INVALID_DATA"),
    ("POST", "/v1/contents", b"", 422, "INVALID_DATA"),
    ("POST", "/v1/contents?flags=bogus", None, 400, "INVALID_PARAMETER"),
    ("POST", "/v1/contents/nope/stream-read", None, 404, "INVALID_HANDLE"),
    ("PUT", "/v1/contents/nope/data?offset=0", b"abc", 404, "INVALID_HANDLE"),
    ("POST", "/v1/contents/nope/block-read?offset=0", None, 404, "INVALID_HANDLE"),
    ("DELETE", "/v1/contents/nope", None, 404, "INVALID_HANDLE"),
    ("GET", "/v1/publications/none/content-information", None, 400, "INVALID_PARAMETER"),
    ("POST", "/v1/publications?version=3", b"x", 400, "INVALID_PARAMETER"),
    ("POST", "/v1/publications?hash=md5", b"x", 400, "INVALID_PARAMETER"),
    ("GET", "/v1/nothing-here", None, 404, "INVALID_PARAMETER"),
]


async def test_bad_input_on_every_route_gets_a_clear_error(daemon: DaemonProcess) -> None:
    data = content(3 * BLOCK, seed=12)
    ci = content_information(data).to_bytes()
    async with daemon.session() as api:
        for method, path, body, status, name in BAD_REQUESTS:
            async with api.request(method, path, data=body) as r:
                assert (r.status, (await r.json())["error"]) == (status, name), path
        async with api.post("/v1/publications", params={"id": "p"}, data=data) as r:
            assert r.status == 201
        async with api.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        for method, path, status, name in (
            ("POST", f"/v1/contents/{h}/stream-read?max=-1", 400, "INVALID_PARAMETER"),
            ("POST", f"/v1/contents/{h}/stream-read?max=lots", 400, "INVALID_PARAMETER"),
            ("POST", f"/v1/contents/{h}/stream-read?timeout_ms=-5", 400, "INVALID_PARAMETER"),
            ("POST", f"/v1/contents/{h}/block-read", 400, "INVALID_PARAMETER"),
            ("POST", f"/v1/contents/{h}/block-read?offset=999999999", 416, "NO_MORE"),
            ("PUT", f"/v1/contents/{h}/data?offset=-1", 400, "INVALID_PARAMETER"),
            ("PUT", f"/v1/contents/{h}/data", 400, "INVALID_PARAMETER"),
            ("POST", f"/v1/contents/{h}/content-information", 400, "INVALID_PARAMETER"),
            (
                "GET",
                "/v1/publications/p/content-information?offset=0&length=0",
                400,
                "INVALID_PARAMETER",
            ),
            (
                "GET",
                f"/v1/publications/p/content-information?offset={len(data)}",
                400,
                "INVALID_PARAMETER",
            ),
        ):
            async with api.request(method, path, data=b"\xff" * 7) as r:
                assert (r.status, (await r.json())["error"]) == (status, name), path
        # A huge content-information body is refused before it is read.
        async with api.post("/v1/contents", data=io.BytesIO(b"\0" * (65 * 1024 * 1024))) as r:
            assert r.status in (400, 413)
        async with api.get("/v1/status") as r:
            assert r.status == 200 and (await r.json())["status"] == "AVAILABLE"
    assert daemon.proc.poll() is None
