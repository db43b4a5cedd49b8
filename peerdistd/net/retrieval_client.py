"""The MS-PCCRR retrieval client: one pooled keep-alive aiohttp session for all peers.

Every failure comes out as a :class:`PeerError`; aiohttp's exceptions never escape. Hashes
are the caller's business: this module only decrypts.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from types import TracebackType
from typing import Final

import aiohttp
from yarl import URL

from peerdistd.errors import DecodeError
from peerdistd.net.types import (
    BUSY_HEADER,
    PeerBusy,
    PeerError,
    PeerProtocolError,
    PeerTimeout,
    PeerUnreachable,
)
from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrr import (
    MAGIC_PATH,
    MAX_RESPONSE_SIZE,
    TRANSPORT_HEADER_SIZE,
    V1_0,
    V2_0,
    Blk,
    BlkList,
    BlockRange,
    CryptoAlgo,
    GetBlkList,
    GetBlks,
    NegoReq,
    NegoResp,
    ProtocolVersion,
)
from peerdistd.proto.pccrr_server import normalise_ranges

__all__ = [
    "PeerBusy",
    "PeerError",
    "PeerProtocolError",
    "PeerTimeout",
    "PeerUnreachable",
    "RetrievalClient",
]

REQUEST_TIMEOUT: Final = 2.0  # [MS-PCCRR] 3.1.2 client request timer (<9>)
_MAX_BODY: Final = TRANSPORT_HEADER_SIZE + MAX_RESPONSE_SIZE
_MAX_CACHED_URLS: Final = 4096


class RetrievalClient:
    """Fetches blocks and block lists from peers named by ``ip:port`` (discovery XAddrs)."""

    def __init__(
        self,
        *,
        connections_per_peer: int = 8,
        max_connections: int = 256,
        keepalive_timeout: float = 30.0,
    ) -> None:
        self._limits = (connections_per_peer, max_connections, keepalive_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def __aenter__(self) -> RetrievalClient:
        per_peer, total, keepalive = self._limits
        connector = aiohttp.TCPConnector(
            limit=total, limit_per_host=per_peer, keepalive_timeout=keepalive
        )
        # Timeouts are ours (asyncio.timeout per request); aiohttp's would surface as its own.
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get_block(
        self,
        peer: str,
        segment_id: bytes,
        index: int,
        secret: bytes,
        block_length: int,
        *,
        crypto: int = CryptoAlgo.AES_128,
        timeout: float = REQUEST_TIMEOUT,
    ) -> bytes | None:
        """The block's plaintext cut to ``block_length``, or None if the peer lacks it."""
        request = GetBlks(segment_id, (BlockRange(index, 1),), crypto=crypto)
        answer, busy = await self._exchange(peer, pccrr.serialize(request), timeout)
        if not isinstance(answer, Blk):
            raise _unexpected(peer, answer, "GETBLKS")
        # The checks iPXE's peerblk.c makes: same segment id and block index.
        if answer.segment_id != segment_id or answer.block_index != index:
            raise PeerProtocolError(peer, f"MSG_BLK for another block ({answer.block_index})")
        if not answer.block:
            if busy:
                raise PeerBusy(peer, "upload limit reached")
            return None
        try:
            return blockcrypto.decrypt(answer.crypto, secret, answer.iv, answer.block, block_length)
        except DecodeError as exc:
            raise PeerProtocolError(peer, f"undecryptable MSG_BLK: {exc}") from exc

    async def get_block_list(
        self,
        peer: str,
        segment_id: bytes,
        ranges: Iterable[BlockRange],
        *,
        timeout: float = REQUEST_TIMEOUT,
    ) -> BlkList:
        """Which blocks of ``ranges`` the peer holds (MSG_BLKLIST), checked against the ask."""
        wanted = tuple(ranges)
        request = GetBlkList(segment_id, wanted)
        covered = normalise_ranges(wanted)
        answer, busy = await self._exchange(peer, pccrr.serialize(request), timeout)
        if not isinstance(answer, BlkList):
            raise _unexpected(peer, answer, "GETBLKLIST")
        if answer.segment_id != segment_id:
            raise PeerProtocolError(peer, "MSG_BLKLIST for another segment")
        # [MS-PCCRR] 3.1.5.2: every range returned must lie within what was asked for.
        for got in answer.ranges:
            if got.count and not any(w.index <= got.index and got.end <= w.end for w in covered):
                raise PeerProtocolError(peer, f"MSG_BLKLIST range {got} was not asked for")
        if busy and not answer.ranges:
            raise PeerBusy(peer, "upload limit reached")
        return answer

    async def negotiate(
        self, peer: str, *, timeout: float = REQUEST_TIMEOUT
    ) -> tuple[ProtocolVersion, ProtocolVersion]:
        """The (min, max) protocol versions the peer supports (MSG_NEGO_REQ, 2.2.4.1)."""
        answer, _ = await self._exchange(peer, pccrr.serialize(NegoReq(V1_0, V2_0)), timeout)
        if not isinstance(answer, NegoResp):
            raise _unexpected(peer, answer, "NEGO_REQ")
        return answer.min_version, answer.max_version

    async def _exchange(
        self, peer: str, request: bytes, timeout: float
    ) -> tuple[pccrr.Response, bool]:
        """POST one message; the parsed answer and whether it was marked busy."""
        if self._session is None:
            raise RuntimeError("RetrievalClient used outside 'async with'")
        url = self._url(peer)
        try:
            async with asyncio.timeout(timeout):
                try:
                    body, busy = await self._post(url, peer, request)
                except aiohttp.ServerDisconnectedError:
                    # A pooled keep-alive connection the peer had just closed: one fresh try.
                    body, busy = await self._post(url, peer, request)
        except TimeoutError as exc:
            raise PeerTimeout(peer, f"no answer within {timeout} s") from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise PeerUnreachable(peer, str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise PeerProtocolError(peer, str(exc) or type(exc).__name__) from exc
        try:
            return pccrr.parse_response(body), busy
        except DecodeError as exc:
            raise PeerProtocolError(peer, f"malformed answer: {exc}") from exc

    async def _post(self, url: URL, peer: str, request: bytes) -> tuple[bytes, bool]:
        assert self._session is not None
        async with self._session.post(url, data=request) as resp:
            if resp.status != 200:
                raise PeerProtocolError(peer, f"HTTP {resp.status}")
            busy = resp.headers.get(BUSY_HEADER) == "1"
            length = resp.content_length
            if length is not None:
                if length > _MAX_BODY:
                    raise PeerProtocolError(peer, f"answer of {length} bytes is too big")
                try:
                    return await resp.content.readexactly(length), busy
                except asyncio.IncompleteReadError as exc:
                    raise PeerProtocolError(peer, "answer cut short") from exc
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > _MAX_BODY:
                    raise PeerProtocolError(peer, "answer too big")
            return bytes(body), busy

    def _url(self, peer: str) -> URL:
        url = self._urls.get(peer)
        if url is None:
            url = _peer_url(peer)
            if len(self._urls) >= _MAX_CACHED_URLS:
                self._urls.clear()
            self._urls[peer] = url
        return url


def _peer_url(peer: str) -> URL:
    """``http://ip:port/<magic>/`` for a bare ``ip:port`` (IPv6 in brackets); no DNS names."""
    host, _, port = peer.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise PeerError(peer, "not an ip:port address") from None
    if not 0 < number < 65536:
        raise PeerError(peer, f"port {number} out of range")
    return URL.build(scheme="http", host=host, port=number, path=MAGIC_PATH)


def _unexpected(peer: str, answer: pccrr.Response, asked: str) -> PeerProtocolError:
    if isinstance(answer, NegoResp):  # 3.2.5: the peer does not speak our major version
        span = f"{answer.min_version}..{answer.max_version}"
        return PeerProtocolError(peer, f"peer only speaks PCCRR {span}")
    return PeerProtocolError(peer, f"MSG_{answer.MSG_TYPE.name} in answer to {asked}")
