"""RetrievalClient against our server and against misbehaving fake peers on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from peerdistd.errors import RemoteError
from peerdistd.net.retrieval_client import (
    PeerBusy,
    PeerError,
    PeerProtocolError,
    PeerTimeout,
    PeerUnreachable,
    RetrievalClient,
)
from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrr import V1_0, V2_0, Blk, BlkList, BlockRange, CryptoAlgo, NegoResp

SEG = bytes(range(32))
KP = bytes(range(100, 132))
BLOCKS = {0: b"\x00" * 65536, 1: bytes(range(256)) * 256, 2: b"tail" * 1000 + b"!", 7: b"x" * 16}
LENGTHS = {i: len(b) for i, b in BLOCKS.items()}


class Source:
    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return sorted(BLOCKS) if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return BLOCKS.get(index) if segment_id == SEG else None


@pytest.fixture
async def peer() -> AsyncIterator[tuple[str, RetrievalServer]]:
    async with RetrievalServer(Source(), "127.0.0.1", 0) as srv:
        yield f"127.0.0.1:{srv.port}", srv


@pytest.fixture
async def client() -> AsyncIterator[RetrievalClient]:
    async with RetrievalClient(connections_per_peer=2) as c:
        yield c


@asynccontextmanager
async def fake_peer(
    answer: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An HTTP server answering every PCCRR POST with ``answer``."""
    app = web.Application()
    app.router.add_post(pccrr.MAGIC_PATH, answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def replying(body: bytes, status: int = 200) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, status=status)

    return handler


@pytest.mark.parametrize("algo", [CryptoAlgo.AES_128, CryptoAlgo.AES_192, CryptoAlgo.AES_256])
@pytest.mark.parametrize("index", sorted(BLOCKS))
async def test_get_block_decrypts_each_algorithm(
    peer: tuple[str, RetrievalServer], client: RetrievalClient, algo: CryptoAlgo, index: int
) -> None:
    got = await client.get_block(peer[0], SEG, index, KP, LENGTHS[index], crypto=algo)
    assert got == BLOCKS[index]


async def test_plaintext_is_served_only_where_allowed(client: RetrievalClient) -> None:
    seen: list[int] = []
    for allow in (False, True):
        async with RetrievalServer(Source(), "127.0.0.1", 0, allow_plaintext=allow) as srv:
            address = f"127.0.0.1:{srv.port}"
            got = await client.get_block(address, SEG, 2, KP, LENGTHS[2], crypto=0)
            assert got == BLOCKS[2]
            seen.append(len(got))
    assert seen == [LENGTHS[2]] * 2


async def test_plaintext_answer_is_used_as_is(client: RetrievalClient) -> None:
    blk = pccrr.serialize_response(Blk(SEG, 4, 0, b"plain-block!", crypto=0))
    async with fake_peer(replying(blk)) as address:
        assert await client.get_block(address, SEG, 4, KP, 5) == b"plain"


async def test_dont_have_is_none(
    peer: tuple[str, RetrievalServer], client: RetrievalClient
) -> None:
    assert await client.get_block(peer[0], SEG, 3, KP, 65536) is None
    assert await client.get_block(peer[0], b"\x42" * 32, 0, KP, 65536) is None


async def test_busy_peer_raises_peer_busy(client: RetrievalClient) -> None:
    async with RetrievalServer(Source(), "127.0.0.1", 0, upload_limit=0) as srv:
        address = f"127.0.0.1:{srv.port}"
        with pytest.raises(PeerBusy) as info:
            await client.get_block(address, SEG, 0, KP, 65536)
        assert info.value.peer == address
        with pytest.raises(PeerBusy):
            await client.get_block_list(address, SEG, [BlockRange(0, 8)])


async def test_get_block_list_and_negotiate(
    peer: tuple[str, RetrievalServer], client: RetrievalClient
) -> None:
    answer = await client.get_block_list(peer[0], SEG, [BlockRange(1, 3), BlockRange(0, 1)])
    assert answer == BlkList(SEG, (BlockRange(0, 3),), next_block_index=7)
    assert await client.negotiate(peer[0]) == (V1_0, V2_0)


async def test_ipv6_loopback_peer(client: RetrievalClient) -> None:
    async with RetrievalServer(Source(), "::1", 0) as srv:
        got = await client.get_block(f"[::1]:{srv.port}", SEG, 1, KP, LENGTHS[1])
    assert got == BLOCKS[1]


async def test_connections_are_kept_alive_and_bounded_per_peer(
    peer: tuple[str, RetrievalServer], client: RetrievalClient
) -> None:
    address, srv = peer
    for _ in range(5):
        assert await client.get_block(address, SEG, 0, KP, 65536) == BLOCKS[0]
    assert srv.open_connections == 1
    many = [client.get_block(address, SEG, i % 3, KP, LENGTHS[i % 3]) for i in range(12)]
    assert await asyncio.gather(*many) == [BLOCKS[i % 3] for i in range(12)]
    assert srv.open_connections <= 2


async def test_refused_connection_is_unreachable(client: RetrievalClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(PeerUnreachable):
        await client.get_block(f"127.0.0.1:{port}", SEG, 0, KP, 1)


async def test_silent_peer_times_out(client: RetrievalClient) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PeerTimeout, match=r"no answer within 0\.2 s"):
            await client.get_block(f"127.0.0.1:{port}", SEG, 0, KP, 1, timeout=0.2)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_peer_hanging_up_is_unreachable(client: RetrievalClient) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PeerUnreachable):
            await client.get_block(f"127.0.0.1:{port}", SEG, 0, KP, 1)
    finally:
        server.close()
        await server.wait_closed()


async def test_answer_cut_short_is_a_protocol_error(client: RetrievalClient) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(cut, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(PeerError) as info:
            await client.get_block(f"127.0.0.1:{port}", SEG, 0, KP, 1)
        assert isinstance(info.value, PeerProtocolError | PeerUnreachable)
    finally:
        server.close()
        await server.wait_closed()


BAD_ANSWERS = {
    "http-404": (b"", 404, "HTTP 404"),
    "garbage": (b"\x00\x00\x00\x04junk", 200, "malformed answer"),
    "other-block": (
        pccrr.serialize_response(Blk(SEG, 9, 0, b"x" * 16, b"", bytes(16), 1)),
        200,
        "another block",
    ),
    "other-segment": (pccrr.serialize_response(Blk(b"\x01" * 32, 0)), 200, "another block"),
    "nego": (
        pccrr.serialize_response(NegoResp(pccrr.ProtocolVersion(3), pccrr.ProtocolVersion(3))),
        200,
        "only speaks PCCRR 3.0..3.0",
    ),
    "blklist": (
        pccrr.serialize_response(BlkList(SEG, ())),
        200,
        "MSG_BLKLIST in answer to GETBLKS",
    ),
    "unaligned": (
        pccrr.serialize_response(Blk(SEG, 0, 0, b"x" * 116, b"", bytes(16), 1)),
        200,
        "not 16-aligned",
    ),
    "short": (
        pccrr.serialize_response(Blk(SEG, 0, 0, b"x" * 16, b"", bytes(16), 1)),
        200,
        "shorter than 100",
    ),
    "algo": (
        pccrr.serialize_response(Blk(SEG, 0, 0, b"x" * 128, b"", bytes(16), 9)),
        200,
        "CryptoAlgoId 9",
    ),
    "huge": (bytes(pccrr.MAX_RESPONSE_SIZE + 8), 200, "too big"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
async def test_bad_answers_are_protocol_errors(client: RetrievalClient, case: str) -> None:
    body, status, why = BAD_ANSWERS[case]
    async with fake_peer(replying(body, status)) as address:
        with pytest.raises(PeerProtocolError, match=why) as info:
            await client.get_block(address, SEG, 0, KP, 100)
    assert isinstance(info.value, RemoteError) and info.value.peer == address


async def test_chunked_oversized_answer_is_refused(client: RetrievalClient) -> None:
    async def stream(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(60):
            await response.write(bytes(8192))
        await response.write_eof()
        return response

    async with fake_peer(stream) as address:
        with pytest.raises(PeerProtocolError, match="too big"):
            await client.get_block(address, SEG, 0, KP, 100)


async def test_block_list_outside_the_request_is_rejected(client: RetrievalClient) -> None:
    body = pccrr.serialize_response(BlkList(SEG, (BlockRange(50, 2),)))
    async with fake_peer(replying(body)) as address:
        with pytest.raises(PeerProtocolError, match="not asked for"):
            await client.get_block_list(address, SEG, [BlockRange(0, 10)])
        with pytest.raises(PeerProtocolError, match="MSG_BLKLIST in answer to NEGO_REQ"):
            await client.negotiate(address)


@pytest.mark.parametrize("address", ["example.com:80", "127.0.0.1", "127.0.0.1:0", "[::1]:x"])
async def test_bad_peer_addresses_are_peer_errors(client: RetrievalClient, address: str) -> None:
    with pytest.raises(PeerError):
        await client.get_block(address, SEG, 0, KP, 1)


async def test_iv_is_taken_from_the_answer(client: RetrievalClient) -> None:
    iv = bytes(range(16))
    block, _ = blockcrypto.encrypt(2, KP, b"secret data", iv)
    body = pccrr.serialize_response(Blk(SEG, 0, 0, block, b"", iv, crypto=2))
    async with fake_peer(replying(body)) as address:
        assert await client.get_block(address, SEG, 0, KP, 11) == b"secret data"
