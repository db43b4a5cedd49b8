"""Requests that aiohttp's HTTP parser refuses get one JSON error each (never plain text),
the daemon keeps serving, and its log says so once per kind, without tracebacks (issue 8,
finding 10: a NUL in a request header logged a traceback per request)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.harness import DaemonProcess

HEAD = b"Host: peerdistd\r\nConnection: close\r\n"

MALFORMED = {
    "nul in a header value": b"GET /v1/status HTTP/1.1\r\n" + HEAD + b"X-Bad: a\x00b\r\n\r\n",
    "nul in a header name": b"GET /v1/status HTTP/1.1\r\n" + HEAD + b"X-B\x00d: v\r\n\r\n",
    "space in a header name": b"GET /v1/status HTTP/1.1\r\n" + HEAD + b"Bad Name: v\r\n\r\n",
    "bare CR in a value": b"GET /v1/status HTTP/1.1\r\n" + HEAD + b"X-Bad: a\rb\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 40 + b"\r\n\r\n",
    "bad method": b"G(T /v1/status HTTP/1.1\r\n" + HEAD + b"\r\n",
    "bad version": b"GET /v1/status HTTP/9.Z\r\n" + HEAD + b"\r\n",
    "huge header": b"GET /v1/status HTTP/1.1\r\n" + HEAD + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "two content lengths": (
        b"PUT /v1/publications HTTP/1.1\r\n" + HEAD + b"Content-Length: 1\r\nContent-Length: 2"
        b"\r\n\r\nab"
    ),
    "length and chunked": (
        b"POST /v1/publications HTTP/1.1\r\n" + HEAD + b"Content-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad chunk size": (
        b"POST /v1/publications HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n"
    ),
    "negative length": b"POST /v1/contents HTTP/1.1\r\n" + HEAD + b"Content-Length: -5\r\n\r\n",
}


def raw_request(sock: Path, request: bytes) -> tuple[int, bytes, bytes]:
    """(status, head, body) of the answer to bytes sent as they are."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(sock))
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


def test_malformed_requests_get_json_errors_and_no_log_flood(daemon: DaemonProcess) -> None:
    for what, request in MALFORMED.items():
        status, head, body = raw_request(daemon.socket, request)
        assert status == 400, (what, head, body)
        assert b"application/json" in head.lower(), (what, head)
        assert json.loads(body)["error"] == "INVALID_PARAMETER", (what, body)
    for i in range(50):  # the same fault on ever new paths: no new log line each time
        request = MALFORMED["nul in a header value"].replace(b"/v1/status", f"/v1/s{i}".encode())
        status, _, body = raw_request(daemon.socket, request)
        assert status == 400 and json.loads(body)["error"] == "INVALID_PARAMETER"
    status, _, body = raw_request(daemon.socket, b"GET /v1/status HTTP/1.1\r\n" + HEAD + b"\r\n")
    assert status == 200 and json.loads(body)["status"] == "AVAILABLE"
    log = daemon.output()
    assert "Traceback" not in log
    # Once per kind (the kinds above share few exception types), then rate-limited.
    assert log.count("bad request") <= len(MALFORMED), log
