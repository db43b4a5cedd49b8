"""The MS-PCCRR retrieval client: pooled keep-alive connections, a bounded number per peer.

Each connection is an asyncio Protocol (:mod:`http11_client`) reading answers straight into
buffers of their exact size; no task per request. Every failure comes out as a
:class:`PeerError`. Hashes are the caller's business: this module only decrypts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Final

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
from peerdistd.proto import pccrr_client
from peerdistd.proto.pccrr import (
    MAGIC_PATH,
    MAX_RESPONSE_SIZE,
    RUN_BYTES,
    RUN_LIMIT,
    RUN_PATH,
    TRANSPORT_HEADER_SIZE,
    Blk,
    BlkList,
    BlockRange,
    CryptoAlgo,
    ProtocolVersion,
)
from peerdistd.proto.pccrr_client import Outcome, UnexpectedAnswer

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
# Blocks that go in runs: V1 blocks (64 KiB) and V2 segments ([MS-PCCRC] 2.4.1.2: at most
# 128 KiB); larger ones go singly.
RUN_BLOCK_MAX: Final = 128 * 1024
# A run answer: at most RUN_BYTES of block data in at most RUN_LIMIT MSG_BLKs, with room for
# each message's fields.
_MAX_RUN_BODY: Final = RUN_BYTES + RUN_LIMIT * 1024
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
        # Runs (pccrr.RUN_PATH) on connections of their own: their answers may be bigger.
        self._runs = PeerPools(
            RUN_PATH,
            connections_per_peer,
            max_connections,
            keepalive_timeout,
            _MAX_RUN_BODY,
            local_host,
        )

    async def __aenter__(self) -> RetrievalClient:
        self._pool.open(asyncio.get_running_loop())
        self._runs.open(asyncio.get_running_loop())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._pool.close()
        await self._runs.close()

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
        request = pccrr_client.block_request(segment_id, index, crypto)
        body, busy = await self._exchange(
            peer, request, timeout, (block_length, min_rate), progress
        )
        with _translated(peer):
            answer = pccrr_client.parse_block(
                body, segment_id, index, secret, block_length, busy=busy
            )
        if answer.outcome is Outcome.BUSY:
            raise PeerBusy(peer, "upload limit reached")
        return answer.data if answer.outcome is Outcome.BLOCK else None

    async def get_block_cipher(
        self,
        peer: str,
        segment_id: bytes,
        index: int,
        *,
        crypto: int = CryptoAlgo.AES_128,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Blk | None:
        """The MSG_BLK for the block still encrypted (the caller tries its keys), or None."""
        request = pccrr_client.block_request(segment_id, index, crypto)
        body, busy = await self._exchange(peer, request, timeout)
        with _translated(peer):
            answer = pccrr_client.block_cipher(body, segment_id, index, busy=busy)
        if answer is Outcome.BUSY:
            raise PeerBusy(peer, "upload limit reached")
        return None if isinstance(answer, Outcome) else answer

    async def get_block_run(
        self,
        peer: str,
        blocks: Sequence[tuple[bytes, int]],
        *,
        crypto: int = CryptoAlgo.AES_128,
        timeout: float = REQUEST_TIMEOUT,
        floor: tuple[int, float] | None = None,
    ) -> list[Blk | None]:
        """The MSG_BLKs of ``blocks`` ((segment id, index) pairs; maybe only the first few)
        still encrypted, None for each the peer lacks; one exchange on the RUN_PATH
        extension. A server that does not know the extension answers 404: a
        :class:`PeerProtocolError`. ``floor``: (bytes expected, bytes/s) below which the
        answer fails as PeerSlow."""
        request = pccrr_client.run_request(blocks, crypto)
        answer = await self._runs.exchange(peer, request, timeout, floor=floor)
        busy = answer.fields.get(_BUSY_FIELD) == b"1"
        with _translated(peer):
            got = pccrr_client.split_runs(answer.body, blocks, busy=busy)
        if got[0] is Outcome.BUSY:
            raise PeerBusy(peer, "upload limit reached")
        return [None if isinstance(b, Outcome) else b for b in got]

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
        request = pccrr_client.block_list_request(segment_id, wanted)
        body, busy = await self._exchange(peer, request, timeout)
        with _translated(peer):
            answer = pccrr_client.parse_block_list(body, segment_id, wanted, busy=busy)
        if isinstance(answer, Outcome):
            raise PeerBusy(peer, "upload limit reached")
        return answer

    async def negotiate(
        self, peer: str, *, timeout: float = REQUEST_TIMEOUT
    ) -> tuple[ProtocolVersion, ProtocolVersion]:
        """The (min, max) protocol versions the peer supports (MSG_NEGO_REQ, 2.2.4.1)."""
        body, _ = await self._exchange(peer, pccrr_client.nego_request(), timeout)
        with _translated(peer):
            return pccrr_client.parse_nego(body)

    async def _exchange(
        self,
        peer: str,
        request: bytes,
        timeout: float,
        floor: tuple[int, float] | None = None,
        progress: Progress | None = None,
    ) -> tuple[bytes | bytearray, bool]:
        """POST one message; the answer's body and whether it was marked busy."""
        answer = await self._pool.exchange(peer, request, timeout, floor=floor, progress=progress)
        return answer.body, answer.fields.get(_BUSY_FIELD) == b"1"


@contextlib.contextmanager
def _translated(peer: str) -> Iterator[None]:
    """The sans-IO client's verdicts as this layer's PeerProtocolError."""
    try:
        yield
    except UnexpectedAnswer as exc:
        raise PeerProtocolError(peer, str(exc)) from exc
