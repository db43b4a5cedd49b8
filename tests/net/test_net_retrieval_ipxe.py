"""An iPXE-style MSG_GETBLKS over real HTTP, its MSG_BLK checked the way iPXE's peerblk.c does.

The decoder below is written independently of our codec, from peerblk_parse_header(),
peerblk_parse_block(), peerblk_parse_iv() and peerblk_decrypt() (PROTOCOLS.md 2.4, 2.5).
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peerdistd.net.retrieval_server import RetrievalServer

# shared/vectors: derived GETBLKS for the V1 iis-85 segment 0 (CryptoAlgoId 1, block 0) and
# that segment's id and Kp from pccrc_v1_iis85.json.
GETBLKS = bytes.fromhex(
    "0000000100000003000000440000000100000020491b217dbee2b5f12ca79b015e06f4bb"
    "e64f9745bad7867aef17de59927edce900000001000000000000000100000000"
)
SEGMENT_ID = bytes.fromhex("491b217dbee2b5f12ca79b015e06f4bbe64f9745bad7867aef17de59927edce9")
KP = bytes.fromhex("11afc0d7949243f94f9c1fab35d9fd1e331fcf7811a2e01d3587b38d770a29e2")
# iis-85.png is 99710 bytes: block 0 is 64 KiB, block 1 the 34174-byte rest.
BLOCKS = {0: bytes(i * 31 % 256 for i in range(65536)), 1: b"\x89PNG" * (34174 // 4) + b"xx"}


class Segment:
    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return KP if segment_id == SEGMENT_ID else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return [0, 1] if segment_id == SEGMENT_ID else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return BLOCKS.get(index) if segment_id == SEGMENT_ID else None


def ipxe_decode(body: bytes, segment_id: bytes, index: int, block_len: int, kp: bytes) -> bytes:
    """Accept or reject a retrieval response body as iPXE does; return the checked plaintext."""
    u32 = lambda offset: struct.unpack_from(">I", body, offset)[0]  # noqa: E731
    assert len(body) >= 4 + 16, "message too short for header"
    assert u32(4 + 4) == 5, "unexpected message type"
    keylen = {0: 0, 1: 16, 2: 24, 3: 32}[u32(4 + 12)]
    assert keylen <= len(kp), "secret too short for key"
    offset = 4 + 16
    assert u32(offset) == len(segment_id), "incorrect digest size"
    assert body[offset + 4 : offset + 4 + len(segment_id)] == segment_id, "segment ID mismatch"
    offset += 4 + len(segment_id)
    assert u32(offset) == index, "block ID mismatch"
    data_len = u32(offset + 8)
    assert data_len != 0, "block not found"
    assert data_len >= block_len, "underlength block"
    data = body[offset + 12 : offset + 12 + data_len]
    offset += 12 + data_len
    if keylen == 0:
        return data[:block_len]
    vrf_len = u32(offset)
    offset += 4 + vrf_len
    assert u32(offset) == 16, "incorrect IV size"
    iv = body[offset + 4 : offset + 20]
    assert len(body) >= offset + 20, "message too short for initialisation vector"
    assert data_len % 16 == 0, "unaligned data length"
    plain = Cipher(algorithms.AES(kp[:keylen]), modes.CBC(iv)).decryptor().update(data)
    return plain[:block_len]


async def ipxe_post(port: int, body: bytes) -> bytes:
    """POST as iPXE's httpcore does: no Content-Type, keep-alive, then read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await _exchange(reader, writer, port, body)
    finally:
        writer.close()
        await writer.wait_closed()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, body: bytes
) -> bytes:
    head = (
        "POST /116B50EB-ECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\r\n"
        "User-Agent: iPXE/1.21.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Connection: keep-alive\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 200"), status
    length = None
    while (line := await reader.readline()) != b"\r\n":
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
        assert name.lower() != "transfer-encoding", "iPXE wants a Content-Length here"
    assert length is not None
    return await reader.readexactly(length)


async def test_ipxe_getblks_gets_a_blk_ipxe_accepts() -> None:
    async with RetrievalServer(Segment(), "127.0.0.1", 0) as srv:
        body = await ipxe_post(srv.port, GETBLKS)
    assert struct.unpack_from(">I", body)[0] == len(body) - 4  # TRANSPORT_RESPONSE_HEADER
    assert struct.unpack_from(">II", body, 4) == (0x00000001, 5)  # ProtVer 1.0, MSG_BLK
    assert struct.unpack_from(">I", body, 16)[0] == 1  # AES-128 as asked
    assert ipxe_decode(body, SEGMENT_ID, 0, 65536, KP) == BLOCKS[0]


async def test_ipxe_short_last_block_and_keep_alive() -> None:
    second = bytearray(GETBLKS)
    struct.pack_into(">I", second, 16 + 4 + 32 + 4, 1)  # ask for block 1 instead
    async with RetrievalServer(Segment(), "127.0.0.1", 0) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            first = await _exchange(reader, writer, srv.port, GETBLKS)
            again = await _exchange(reader, writer, srv.port, bytes(second))
        finally:
            writer.close()
            await writer.wait_closed()
    assert ipxe_decode(first, SEGMENT_ID, 0, 65536, KP) == BLOCKS[0]
    assert struct.unpack_from(">I", again, 4 + 16 + 36 + 8)[0] == 34176  # PKCS#7 to 16
    assert ipxe_decode(again, SEGMENT_ID, 1, 34174, KP) == BLOCKS[1]


async def test_ipxe_sees_block_not_found_for_unknown_segment() -> None:
    other = GETBLKS.replace(SEGMENT_ID, b"\x01" * 32)
    async with RetrievalServer(Segment(), "127.0.0.1", 0) as srv:
        body = await ipxe_post(srv.port, other)
    offset = 4 + 16 + 4 + 32
    assert struct.unpack_from(">II", body, 4) == (1, 5)
    assert struct.unpack_from(">III", body, offset) == (0, 0, 0)  # SizeOfBlock 0: not found
