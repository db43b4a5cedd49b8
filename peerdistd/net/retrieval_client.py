"""The MS-PCCRR retrieval client: pooled keep-alive connections, a bounded number per peer.

Each connection is an asyncio Protocol (:mod:`http11_client`) reading answers straight into
buffers of their exact size; no task per request. Every failure comes out as a
:class:`PeerError`. Hashes are the caller's business: this module only decrypts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Final

from peerdistd.errors import DecodeError
from peerdistd.net.http11_pool import PeerPools
from peerdistd.net.types import (
    BUSY_HEADER,
    PeerBusy,
    PeerError,
    PeerProtocolError,
    PeerSlow,
    PeerTimeout,
    PeerUnreachable,
    Progress,
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
    "PeerSlow",
    "PeerTimeout",
    "PeerUnreachable",
    "RetrievalClient",
]

REQUEST_TIMEOUT: Final = 2.0  # [MS-PCCRR] 3.1.2 client request timer (<9>)
_MAX_BODY: Final = TRANSPORT_HEADER_SIZE + MAX_RESPONSE_SIZE
_BUSY_FIELD: Final = BUSY_HEADER.lower().encode()


class RetrievalClient:
    """Fetches blocks and block lists from peers named by ``ip:port`` (discovery XAddrs)."""

    def __init__(
        self,
        *,
        connections_per_peer: int = 8,
        max_connections: int = 256,
        keepalive_timeout: float = 30.0,
        local_host: str | None = None,
    ) -> None:
        self._pool = PeerPools(
            MAGIC_PATH,
            connections_per_peer,
            max_connections,
            keepalive_timeout,
            _MAX_BODY,
            local_host,
        )

    async def __aenter__(self) -> RetrievalClient:
        self._pool.open(asyncio.get_running_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._pool.close()

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
        min_rate: float = 0.0,
        progress: Progress | None = None,
    ) -> bytes | None:
        """The block's plaintext cut to ``block_length``, or None if the peer lacks it.

        An answer slower than ``min_rate`` bytes per second (0: no floor) fails as PeerSlow;
        ``progress`` learns when the request was sent.
        """
        request = GetBlks(segment_id, (BlockRange(index, 1),), crypto=crypto)
        answer, busy = await self._exchange(
            peer, pccrr.serialize(request), timeout, (block_length, min_rate), progress
        )
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
        self,
        peer: str,
        request: bytes,
        timeout: float,
        floor: tuple[int, float] | None = None,
        progress: Progress | None = None,
    ) -> tuple[pccrr.Response, bool]:
        """POST one message; the parsed answer and whether it was marked busy."""
        answer = await self._pool.exchange(peer, request, timeout, floor=floor, progress=progress)
        busy = answer.fields.get(_BUSY_FIELD) == b"1"
        try:
            return pccrr.parse_response(answer.body), busy
        except DecodeError as exc:
            raise PeerProtocolError(peer, f"malformed answer: {exc}") from exc


def _unexpected(peer: str, answer: pccrr.Response, asked: str) -> PeerProtocolError:
    if isinstance(answer, NegoResp):  # 3.2.5: the peer does not speak our major version
        span = f"{answer.min_version}..{answer.max_version}"
        return PeerProtocolError(peer, f"peer only speaks PCCRR {span}")
    return PeerProtocolError(peer, f"MSG_{answer.MSG_TYPE.name} in answer to {asked}")
