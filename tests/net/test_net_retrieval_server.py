"""RetrievalServer over real loopback HTTP: framing, limits, busy, keep-alive, bad requests."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Sequence

import aiohttp
import pytest

from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.net.types import BUSY_HEADER
from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrr import Blk, BlkList, BlockRange, GetBlkList, GetBlks, NegoResp

SEG = bytes(range(32))
KP = bytes(range(100, 132))
BLOCKS = {i: bytes([i]) * 65536 for i in range(4)}
URL = "http://127.0.0.1:{port}/116B50EB-ECE2-41ac-8429-9F9E963361B7/"


class Source:
    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEG else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return sorted(BLOCKS) if segment_id == SEG else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return BLOCKS.get(index) if segment_id == SEG else None


def getblks(index: int) -> bytes:
    return pccrr.serialize(GetBlks(SEG, (BlockRange(index, 1),)))


@pytest.fixture
async def served() -> AsyncIterator[tuple[RetrievalServer, list[int]]]:
    counted: list[int] = []
    async with RetrievalServer(
        Source(), "127.0.0.1", 0, upload_limit=1, on_served=counted.append
    ) as srv:
        yield srv, counted


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, port: int, body: bytes, path: str | None = None
) -> tuple[int, bytes, str | None]:
    url = URL.format(port=port) if path is None else f"http://127.0.0.1:{port}{path}"
    async with http.post(url, data=body) as resp:
        return resp.status, await resp.read(), resp.headers.get(BUSY_HEADER)


async def test_block_answer_and_served_counter(
    served: tuple[RetrievalServer, list[int]], http: aiohttp.ClientSession
) -> None:
    srv, counted = served
    status, body, busy = await post(http, srv.port, getblks(3))
    assert (status, busy) == (200, None)
    msg = pccrr.parse_response(body)
    assert isinstance(msg, Blk) and msg.block_index == 3 and msg.next_block_index == 0
    assert blockcrypto.decrypt(msg.crypto, KP, msg.iv, msg.block, 65536) == BLOCKS[3]
    assert counted == [65536]
    status, body, _ = await post(http, srv.port, getblks(9))
    assert pccrr.parse_response(body) == Blk(SEG, 9)
    assert counted == [65536]  # a "don't have" answer serves nothing
    assert srv.active_uploads == 0


async def test_uploads_beyond_the_limit_get_the_busy_answer(
    served: tuple[RetrievalServer, list[int]], http: aiohttp.ClientSession
) -> None:
    srv, _ = served
    request = getblks(1)
    # Hold the single upload slot with a request whose body is still arriving.
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    writer.write(
        b"POST /116B50EB-ECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(request)}\r\n\r\n".encode()
        + request[:10]
    )
    await asyncio.wait_for(srv.wait_uploads(1), 5)
    status, body, busy = await post(http, srv.port, getblks(0))
    assert (status, busy) == (200, "1")
    assert pccrr.parse_response(body) == Blk(SEG, 0)
    list_request = pccrr.serialize(GetBlkList(SEG, (BlockRange(0, 4),)))
    status, body, busy = await post(http, srv.port, list_request)
    assert (status, busy) == (200, "1")
    assert pccrr.parse_response(body) == BlkList(SEG, ())
    # The held upload completes normally, then the slot is free again.
    writer.write(request[10:])
    assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(srv.wait_uploads(0), 5)
    status, body, busy = await post(http, srv.port, list_request)
    assert busy is None
    assert pccrr.parse_response(body) == BlkList(SEG, (BlockRange(0, 4),))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"garbage that is not a message", 400),
        (struct.pack(">IIII", 1, 5, 16, 0), 400),  # a response type sent as a request
        (bytes(pccrr.MAX_REQUEST_SIZE + 1), 413),
    ],
)
async def test_bad_requests_get_a_clean_error_and_serving_goes_on(
    served: tuple[RetrievalServer, list[int]],
    http: aiohttp.ClientSession,
    body: bytes,
    status: int,
) -> None:
    srv, _ = served
    assert (await post(http, srv.port, body))[0] == status
    status, answer, _ = await post(http, srv.port, getblks(2))
    assert status == 200 and isinstance(pccrr.parse_response(answer), Blk)
    assert srv.active_uploads == 0


async def test_chunked_oversized_body_is_refused(
    served: tuple[RetrievalServer, list[int]], http: aiohttp.ClientSession
) -> None:
    srv, _ = served

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield bytes(8192)

    async with http.post(URL.format(port=srv.port), data=chunks()) as resp:
        assert resp.status == 413
    assert (await post(http, srv.port, getblks(0)))[0] == 200


async def test_path_must_match_exactly(
    served: tuple[RetrievalServer, list[int]], http: aiohttp.ClientSession
) -> None:
    srv, _ = served
    for path in ("/116b50eb-ece2-41ac-8429-9f9e963361b7/", "/116B50EB-ECE2-41ac-8429-9F9E963361B7"):
        assert (await post(http, srv.port, getblks(0), path))[0] == 404
    async with http.get(URL.format(port=srv.port)) as resp:
        assert resp.status == 405


async def test_nego_and_unsupported_version(
    served: tuple[RetrievalServer, list[int]], http: aiohttp.ClientSession
) -> None:
    srv, _ = served
    nego = bytes.fromhex("000000010000000000000018000000000000000100000002")
    _, body, _ = await post(http, srv.port, nego)
    assert pccrr.parse_response(body) == NegoResp(pccrr.V1_0, pccrr.V2_0)
    v3 = bytearray(getblks(0))
    struct.pack_into(">I", v3, 0, 3)
    _, body, _ = await post(http, srv.port, bytes(v3))
    assert isinstance(pccrr.parse_response(body), NegoResp)


async def test_keep_alive_serves_many_requests_on_one_connection(
    served: tuple[RetrievalServer, list[int]],
) -> None:
    srv, counted = served
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    request = getblks(0)
    head = (
        "POST /116B50EB-ECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {len(request)}\r\n\r\n"
    ).encode()
    try:
        for _ in range(3):
            writer.write(head + request)
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
                assert not line.lower().startswith(b"connection: close")
            assert isinstance(pccrr.parse_response(await reader.readexactly(length)), Blk)
        assert srv.open_connections == 1
    finally:
        writer.close()
        await writer.wait_closed()
    assert counted == [65536] * 3


async def test_upload_timer_ends_a_stalled_request() -> None:
    async with RetrievalServer(Source(), "127.0.0.1", 0, upload_timeout=0.2) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(
            b"POST /116B50EB-ECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 68\r\n\r\n\x00\x00"
        )
        try:
            async with asyncio.timeout(5):
                assert (await reader.readline()).startswith(b"HTTP/1.1 408")
        finally:
            writer.close()
            await writer.wait_closed()
        await asyncio.wait_for(srv.wait_uploads(0), 5)


async def test_each_server_gets_its_own_ephemeral_port(http: aiohttp.ClientSession) -> None:
    async with (
        RetrievalServer(Source(), "127.0.0.1", 0) as one,
        RetrievalServer(Source(), "127.0.0.1", 0) as two,
    ):
        assert one.port != two.port and one.port > 0
        assert (await post(http, one.port, getblks(1)))[0] == 200
        assert (await post(http, two.port, getblks(1)))[0] == 200
