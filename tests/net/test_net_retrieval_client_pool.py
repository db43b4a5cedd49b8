"""RetrievalClient's connections: reuse, bounds, stale keep-alives, odd answers, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
import uvloop

from peerdistd.net.http11 import HeadCache, parse_response_head
from peerdistd.net.http11_client import ClientConnection
from peerdistd.net.retrieval_client import (
    PeerError,
    PeerProtocolError,
    PeerTimeout,
    PeerUnreachable,
    RetrievalClient,
)
from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrr import Blk

SEG = bytes(range(32))
KP = bytes(range(100, 132))
BLOCK = bytes(range(256)) * 256
IV = bytes(16)
ANSWER = pccrr.serialize_response(
    Blk(SEG, 0, 0, blockcrypto.encrypt(1, KP, BLOCK, IV)[0], b"", IV, crypto=1)
)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Source:
    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return [0] if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return BLOCK if (segment_id, index) == (SEG, 0) else None


class RawPeer:
    """A TCP server on loopback running ``handler`` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.open = 0
        self.closed = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.writers.append(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await self.handler(reader, writer)
                await reader.read()  # until the client closes
        finally:
            self.open -= 1
            self.closed.set()
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        try:
            yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        finally:
            for writer in self.writers:
                writer.close()
            server.close()
            await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def get(client: RetrievalClient, peer: str, timeout: float = 2.0) -> bytes | None:
    return await client.get_block(peer, SEG, 0, KP, len(BLOCK), timeout=timeout)


async def test_request_shape_and_reuse() -> None:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            seen.append(await read_request(reader))
            writer.write(OK)

    peer = RawPeer(answer)
    async with peer.running() as address, RetrievalClient() as client:
        for _ in range(3):
            assert await get(client, address) == BLOCK
    assert peer.accepted == 1
    head = f"POST /116B50EB-ECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\r\nHost: {address}\r\n"
    assert seen[0].startswith(head.encode() + b"Content-Length: 68\r\n\r\n")
    assert len(set(seen)) == 1


async def test_kept_alive_connection_closed_by_the_peer_is_retried_once() -> None:
    async def one_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await reader.readuntil(b"\r\n\r\n")  # the next request arrives on a closing connection
        writer.transport.abort()

    peer = RawPeer(one_then_hang_up)
    async with peer.running() as address, RetrievalClient() as client:
        assert await get(client, address) == BLOCK
        assert await get(client, address) == BLOCK  # on a fresh connection
    assert peer.accepted == 2


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: %d\r\n\r\n", True),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", True),
    ],
)
async def test_answers_say_whether_the_connection_is_kept(answer: bytes, reused: bool) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer % len(ANSWER) + ANSWER)

    peer = RawPeer(serve)
    async with peer.running() as address, RetrievalClient() as client:
        assert await get(client, address) == BLOCK
        assert await get(client, address) == BLOCK
    assert peer.accepted == (1 if reused else 2)


@pytest.mark.parametrize(
    "framing",
    [
        b"HTTP/1.1 200 OK\r\n\r\n",  # no length: the body runs to the end of the connection
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
async def test_answers_without_content_length(framing: bytes) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if b"chunked" in framing:
            body = b"".join(
                b"%x\r\n%s\r\n" % (len(ANSWER[i : i + 999]), ANSWER[i : i + 999])
                for i in range(0, len(ANSWER), 999)
            )
            writer.write(framing + body + b"0\r\n\r\n")
        else:
            writer.write(framing + ANSWER)
            writer.write_eof()

    peer = RawPeer(serve)
    async with peer.running() as address, RetrievalClient() as client:
        assert await get(client, address) == BLOCK


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed HTTP answer"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "malformed HTTP answer"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 9000, "answer head over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n", "999999999 bytes is too big"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc", "more bytes than"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunked answer"),
        (b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n", "HTTP 503"),
        (b"HTTP/1.1 200 OK\r\nX Y: 1\r\nContent-Length: 0\r\n\r\n", "malformed header"),
        (b"HTTP/1.1 200 OK\r\nX: \x1b[2J\r\nContent-Length: 0\r\n\r\n", "control byte"),
    ],
)
async def test_bad_http_answers_are_protocol_errors(answer: bytes, why: str) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer)

    peer = RawPeer(serve)
    async with peer.running() as address, RetrievalClient() as client:
        with pytest.raises(PeerProtocolError, match=why) as info:
            await get(client, address)
        assert info.value.peer == address


@pytest.mark.parametrize("dribble", [False, True])
async def test_answer_with_both_framings_is_refused_and_its_connection_closed(
    dribble: bool,
) -> None:
    # RFC 9112 6.3 (3): Content-Length beside Transfer-Encoding is a response-splitting attempt;
    # the answer is an error and the connection is not kept (nothing after it is read).
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(ANSWER), ANSWER)
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
        % len(chunked)
        + chunked
    )

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if not dribble:
            writer.write(answer)
            return
        for byte in answer:  # byte at a time, until the client hangs up
            writer.write(bytes((byte,)))
            await writer.drain()
            if writer.transport.is_closing() or reader.at_eof():
                return

    peer = RawPeer(serve)
    async with peer.running() as address, RetrievalClient() as client:
        with pytest.raises(PeerProtocolError, match="both Transfer-Encoding and Content-Length"):
            await get(client, address)
        await asyncio.wait_for(peer.closed.wait(), 5)  # the client closed that connection
        assert peer.open == 0


async def test_bytes_nobody_asked_for_drop_the_idle_connection() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK + b"surprise")
        while True:
            await read_request(reader)
            writer.write(OK)

    peer = RawPeer(chatty)
    async with peer.running() as address, RetrievalClient() as client:
        first = await get(client, address)
        await asyncio.wait_for(peer.closed.wait(), 5)  # the client dropped that connection
        assert first == BLOCK and await get(client, address) == BLOCK
    assert peer.accepted == 2


async def test_per_peer_and_total_bounds_under_load() -> None:
    seen: list[tuple[int, int]] = []  # (connections in all, most to one peer) at each read

    class Counting(Source):
        def read_block(self, segment_id: bytes, index: int) -> bytes | None:
            pools = client._pool._pools.values()
            seen.append((client._pool._total, max(pool.count for pool in pools)))
            return super().read_block(segment_id, index)

    async with (
        RetrievalServer(Counting(), "127.0.0.1", 0) as one,
        RetrievalServer(Counting(), "127.0.0.1", 0) as two,
        RetrievalClient(connections_per_peer=3, max_connections=4) as client,
    ):
        peers = [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"]
        asked = [peers[0]] * 30 + [peers[1]] * 10
        got = await asyncio.gather(*(get(client, peer) for peer in asked))
        assert got == [BLOCK] * 40
    assert len(seen) == 40
    assert max(total for total, _ in seen) == 4
    assert max(most for _, most in seen) == 3


async def test_waiting_for_a_busy_pool_times_out_and_frees_nothing_it_did_not_take() -> None:
    hold, asked = asyncio.Event(), asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        asked.set()
        await hold.wait()
        writer.write(OK)
        while True:
            await read_request(reader)
            writer.write(OK)

    peer = RawPeer(slow)
    async with peer.running() as address, RetrievalClient(connections_per_peer=1) as client:
        first = asyncio.ensure_future(get(client, address, timeout=5))
        await asyncio.wait_for(asked.wait(), 5)
        with pytest.raises(PeerTimeout, match=r"no answer within 0\.1 s"):
            await get(client, address, timeout=0.1)  # waits for the one connection, in vain
        hold.set()
        assert await first == BLOCK
        assert await get(client, address) == BLOCK  # the connection came back to the pool
    assert peer.accepted == 1


async def test_cancelled_request_drops_its_connection() -> None:
    started = asyncio.Event()

    async def stall_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if peer.accepted == 1:
            started.set()
            return  # never answers; the client gives up on this connection
        writer.write(OK)

    peer = RawPeer(stall_first)
    async with peer.running() as address, RetrievalClient(connections_per_peer=1) as client:
        task = asyncio.ensure_future(get(client, address, timeout=5))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await get(client, address) == BLOCK
    assert peer.accepted == 2


async def test_idle_connections_expire() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)

    peer = RawPeer(serve)
    async with peer.running() as address, RetrievalClient(keepalive_timeout=0.05) as client:
        assert await get(client, address) == BLOCK
        await asyncio.wait_for(peer.closed.wait(), 5)
        assert peer.open == 0


async def test_closing_the_client_fails_requests_in_flight() -> None:
    asked = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        asked.set()

    peer = RawPeer(silent)
    async with peer.running() as address:
        client = RetrievalClient()
        async with client:
            task = asyncio.ensure_future(get(client, address, timeout=5))
            await asyncio.wait_for(asked.wait(), 5)
        with pytest.raises(PeerUnreachable, match="client closed"):
            await task
        with pytest.raises(RuntimeError, match="outside 'async with'"):
            await get(client, address)


async def test_connection_closed_before_the_request_is_an_unreachable_peer() -> None:
    # uvloop hands a peer's FIN to eof_received before the task that made the connection runs
    # again: asking on that connection must fail as a PeerError, not trip an assertion.
    ours, theirs = socket.socketpair()
    lost = asyncio.Event()
    conn = ClientConnection("127.0.0.1:1", 1 << 20, HeadCache(parse_response_head))
    conn.on_lost = lambda _conn: lost.set()
    await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, ours)
    theirs.close()
    await asyncio.wait_for(lost.wait(), 5)
    with pytest.raises(PeerUnreachable, match="closed before the request"):
        await conn.exchange(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_peers_hanging_up_at_once_are_only_ever_unreachable_on_uvloop() -> None:
    # What a peer killed mid-read looks like (issue 8 finding 10): connections it accepted
    # close at once. On the daemon's loop (uvloop) the FIN often arrives before the request is
    # sent; every request must still end in PeerUnreachable.
    listener = socket.create_server(("127.0.0.1", 0), backlog=256)
    address = f"127.0.0.1:{listener.getsockname()[1]}"

    def hang_up() -> None:
        with contextlib.suppress(OSError):  # the listener is shut down at the end
            while True:
                listener.accept()[0].close()

    async def ask_many() -> list[str]:
        async def one() -> str:
            try:
                await get(client, address, timeout=5)
            except PeerError as exc:
                return type(exc).__name__
            return "answered"

        async with RetrievalClient() as client:
            outcomes: list[str] = []
            for _ in range(40):
                outcomes += await asyncio.gather(*(one() for _ in range(16)))
            return outcomes

    thread = threading.Thread(target=hang_up)
    thread.start()
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            outcomes = runner.run(ask_many())
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join()
    assert set(outcomes) == {"PeerUnreachable"}
