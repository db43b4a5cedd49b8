"""RetrievalServer's HTTP/1.1 on raw sockets: pipelining, split requests, slow and bad peers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from peerdistd.net import http11_server, retrieval_server
from peerdistd.net.http11 import MAX_HEAD
from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.proto import pccrr
from peerdistd.proto.pccrr import Blk, BlockRange, GetBlks

SEG = bytes(range(32))
KP = bytes(range(100, 132))
BLOCKS = {i: bytes([i]) * 65536 for i in range(4)}
PATH = b"/116B50EB-ECE2-41ac-8429-9F9E963361B7/"
CHUNKED_HEAD = b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

Response = tuple[int, dict[str, str], bytes]


class Source:
    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return sorted(BLOCKS) if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return BLOCKS.get(index) if segment_id == SEG else None


def request(index: int, fields: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    body = pccrr.serialize(GetBlks(SEG, (BlockRange(index, 1),)))
    head = b"POST " + PATH + b" " + version + b"\r\nHost: x\r\n" + fields
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


async def read_response(reader: asyncio.StreamReader) -> Response:
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    fields: dict[str, str] = {}
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        fields[name.lower()] = value.strip()
    body = await reader.readexactly(int(fields["content-length"]))
    return int(status_line.split()[1]), fields, body


async def ended(reader: asyncio.StreamReader) -> None:
    """Read until the server's side of the connection is gone (FIN or reset)."""
    with contextlib.suppress(ConnectionResetError):
        while await reader.read(1 << 20):
            pass


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionResetError):
        await writer.wait_closed()


def block_index(body: bytes) -> int:
    msg = pccrr.parse_response(body)
    assert isinstance(msg, Blk) and msg.block
    return msg.block_index


@pytest.fixture
async def server() -> AsyncIterator[RetrievalServer]:
    async with RetrievalServer(Source(), "127.0.0.1", 0, upload_timeout=5) as srv:
        yield srv


@pytest.fixture
async def conn(
    server: RetrievalServer,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    yield reader, writer
    writer.close()
    # A server that refused a request closes with the client's further bytes unread: the
    # kernel then resets the connection, and wait_closed() may report that (seen under load).
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def test_pipelined_requests_are_answered_in_order(
    server: RetrievalServer, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    reader, writer = conn
    writer.write(request(2) + b"\r\n" + request(0) + request(3))  # an empty line between is ok
    answers = [await read_response(reader) for _ in range(3)]
    assert [block_index(body) for _, _, body in answers] == [2, 0, 3]
    assert all(fields.get("connection") is None for _, fields, _ in answers)
    assert server.active_uploads == 0 and server.open_connections == 1


async def test_request_split_byte_by_byte(
    server: RetrievalServer, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    reader, writer = conn
    for i, byte in enumerate(request(1)):
        writer.write(bytes((byte,)))
        await writer.drain()
        if i == 120:  # the head is in and the body is arriving: the request holds a slot
            await asyncio.wait_for(server.wait_uploads(1), 5)
    status, _, body = await read_response(reader)
    assert status == 200 and block_index(body) == 1
    await asyncio.wait_for(server.wait_uploads(0), 5)


async def test_slowloris_head_gets_408_when_the_upload_timer_runs_out() -> None:
    async with RetrievalServer(Source(), "127.0.0.1", 0, upload_timeout=0.2) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nX-Slow: a")
            status, fields, _ = await asyncio.wait_for(read_response(reader), 5)
            assert (status, fields["connection"]) == (408, "close")
            assert await reader.read() == b""
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS hello, cut short
        (b"<?xml version='1.0'?>", 400),
        (b"POST " + PATH + b" HTTP/2.0\r\n", 400),
        (b"POST " + PATH + b" HTTP/1.1\r\nX: " + b"a" * MAX_HEAD, 431),
        (b"POST " + PATH + b" HTTP/1.1\r\nContent-Length: 9\r\nContent-Length: 8\r\n\r\n", 400),
        (
            b"POST "
            + PATH
            + b" HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 8\r\n\r\n",
            400,
        ),
        (b"POST " + PATH + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 98305\r\n\r\n", 413),
        (CHUNKED_HEAD + b"18001\r\n", 413),
        (CHUNKED_HEAD + b"zz\r\n", 400),
        (b"PUT " + PATH + b" HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /other HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        # RFC 9112 3.2 (Host), RFC 9110 5.1 / 5.5 (names are tokens, no control bytes).
        (request(0).replace(b"Host: x\r\n", b""), 400),
        (request(0).replace(b"Host: x\r\n", b"Host: x\r\nHost: y\r\n"), 400),
        (request(0, b"X Y: 1\r\n"), 400),
        (request(0, b"X: \x01\r\n"), 400),
    ],
)
async def test_bad_requests_are_answered_at_once_and_the_connection_closed(
    server: RetrievalServer,
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    sent: bytes,
    status: int,
) -> None:
    reader, writer = conn
    writer.write(sent)
    got, fields, body = await asyncio.wait_for(read_response(reader), 5)
    assert (got, fields["connection"], body) == (status, "close", b"")
    assert await reader.read() == b""
    assert server.active_uploads == 0


@pytest.mark.parametrize(
    "sent",
    [
        request(0).replace(b"Host: x\r\n", b""),
        request(0, b"X Y: 1\r\n"),
        request(0, b"X: a\x7f\r\n"),
        request(0, b"Transfer-Encoding: chunked\r\n"),
    ],
)
async def test_bad_requests_fed_byte_by_byte_are_refused_and_closed(
    server: RetrievalServer,
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    sent: bytes,
) -> None:
    reader, writer = conn
    with contextlib.suppress(ConnectionError):  # refused at the end of the head, before the body
        for byte in sent:
            writer.write(bytes((byte,)))
            await writer.drain()
    got, fields, body = await asyncio.wait_for(read_response(reader), 5)
    assert (got, fields["connection"], body) == (400, "close", b"")
    await asyncio.wait_for(ended(reader), 5)
    assert server.active_uploads == 0


async def test_chunked_request_is_served(
    server: RetrievalServer, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    reader, writer = conn
    body = pccrr.serialize(GetBlks(SEG, (BlockRange(3, 1),)))
    chunks = b"".join(
        b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + 10]), body[i : i + 10])
        for i in range(0, len(body), 10)
    )
    writer.write(
        CHUNKED_HEAD
        + chunks + b"0\r\nTrailer: yes\r\n\r\n" + request(0)
    )  # fmt: skip
    assert block_index((await read_response(reader))[2]) == 3
    assert block_index((await read_response(reader))[2]) == 0


async def test_expect_100_continue_gets_an_interim_answer(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    reader, writer = conn
    whole = request(2, b"Expect: 100-continue\r\n")
    head, _, body = whole.partition(b"\r\n\r\n")
    writer.write(head + b"\r\n\r\n")
    assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(body)
    assert block_index((await read_response(reader))[2]) == 2


@pytest.mark.parametrize(
    ("version", "fields", "closes", "connection"),
    [
        (b"HTTP/1.0", b"", True, "close"),
        (b"HTTP/1.0", b"Connection: keep-alive\r\n", False, "keep-alive"),
        (b"HTTP/1.1", b"Connection: close\r\n", True, "close"),
    ],
)
async def test_connection_persistence_follows_the_request(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    version: bytes,
    fields: bytes,
    closes: bool,
    connection: str,
) -> None:
    reader, writer = conn
    writer.write(request(1, fields, version) + request(2))
    status, got, body = await read_response(reader)
    assert (status, got["connection"], block_index(body)) == (200, connection, 1)
    if closes:  # the pipelined second request is never read
        assert await reader.read() == b""
    else:
        assert block_index((await read_response(reader))[2]) == 2


async def test_absolute_form_target_is_served(
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    reader, writer = conn
    writer.write(request(1).replace(b"POST /", b"POST http://127.0.0.1/", 1))
    assert block_index((await read_response(reader))[2]) == 1


async def test_an_answer_the_peer_does_not_read_keeps_its_slot() -> None:
    async with RetrievalServer(Source(), "127.0.0.1", 0, upload_limit=1, upload_timeout=5) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.setblocking(False)
        slow_reader, slow_writer = await asyncio.open_connection(sock=sock)
        other_reader, other_writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            # Far more answers than the socket buffers hold: the server's transport pauses.
            slow_writer.write(request(0) * 200)
            await asyncio.wait_for(srv.wait_uploads(1), 5)
            other_writer.write(request(1))
            status, fields, body = await read_response(other_reader)
            assert (status, fields["x-peerdist-busy"]) == (200, "1")
            assert pccrr.parse_response(body) == Blk(SEG, 1)
            for _ in range(200):
                assert block_index((await read_response(slow_reader))[2]) == 0
            await asyncio.wait_for(srv.wait_uploads(0), 5)
        finally:
            for writer in (slow_writer, other_writer):
                await close(writer)


async def test_a_peer_that_never_reads_is_cut_off_by_the_upload_timer() -> None:
    async with RetrievalServer(Source(), "127.0.0.1", 0, upload_timeout=0.3) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", srv.port))
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(request(0) * 200)
            await asyncio.wait_for(srv.wait_uploads(1), 5)
            await asyncio.wait_for(srv.wait_uploads(0), 5)  # aborted, slot given back
            await asyncio.wait_for(ended(reader), 5)
            assert srv.open_connections == 0
        finally:
            await close(writer)


async def test_idle_connections_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http11_server, "KEEPALIVE_TIMEOUT", 0.05)
    async with RetrievalServer(Source(), "127.0.0.1", 0) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(request(0))
        assert (await read_response(reader))[0] == 200
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        await writer.wait_closed()


async def test_exit_closes_idle_connections_and_aborts_stuck_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(retrieval_server, "SHUTDOWN_TIMEOUT", 0.1)
    async with RetrievalServer(Source(), "127.0.0.1", 0) as srv:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", srv.port)
        stuck_reader, stuck_writer = await asyncio.open_connection("127.0.0.1", srv.port)
        idle_writer.write(request(0))
        assert (await read_response(idle_reader))[0] == 200
        stuck_writer.write(request(1)[:-5])  # the body never completes
        await asyncio.wait_for(srv.wait_uploads(1), 5)
    assert srv.open_connections == 0 and srv.active_uploads == 0
    assert await idle_reader.read() == b""
    await asyncio.wait_for(ended(stuck_reader), 5)
    for writer in (idle_writer, stuck_writer):
        await close(writer)


async def test_request_in_progress_on_exit_is_answered_then_closed() -> None:
    srv = RetrievalServer(Source(), "127.0.0.1", 0)
    async with srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        whole = request(3)
        writer.write(whole[:-5])
        await asyncio.wait_for(srv.wait_uploads(1), 5)
        # The rest arrives once the exit has begun: the request is answered, then closed.
        asyncio.get_running_loop().call_soon(writer.write, whole[-5:])
    status, fields, body = await read_response(reader)
    assert (status, fields["connection"], block_index(body)) == (200, "close", 3)
    writer.close()
    await writer.wait_closed()
