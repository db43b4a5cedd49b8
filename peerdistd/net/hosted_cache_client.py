"""A node's side of hosted cache mode: offer completed segments, read from the hosted cache first.

Offers ([MS-PCHC] 3.1) go out in the background from a bounded queue, so they never slow the
application's reads: a full queue skips the offer. v1.0 is INITIAL_OFFER then SEGMENT_INFO
over HTTPS with the hosted cache's certificate checked; v2.0 is BATCHED_OFFER of up to 128
segments over plain HTTP to its PCCRR port. V2 content can only be offered with v2.0.

Reads ask the hosted cache first (PCCRR, like any peer but without discovery), then the LAN
peers of the swarm, the way a Windows client in hosted cache mode does without the LAN part.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Final

import aiohttp

from peerdistd.errors import DecodeError
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.swarm import Swarm
from peerdistd.net.types import PeerError
from peerdistd.proto import pchc, pchc_client
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm, Segment
from peerdistd.proto.pccrr import BlockRange
from peerdistd.proto.pchc_client import Step, V1Offer

log = logging.getLogger(__name__)

OFFER_TIMEOUT: Final = 10.0  # [MS-PCHC] 3.1.2: a request expires after two 5 s ticks
CONTENT_TAG: Final = b"peerdistd".ljust(16, b"\0")  # 2.2.1.4: chosen by the higher layer
_ALL_BLOCKS: Final = (BlockRange(0, 512),)  # [MS-PCCRR] 2.2.1.1: block indexes 0..511


@dataclass
class OfferStats:
    segments_offered: int = 0
    offers_failed: int = 0
    offers_skipped: int = 0  # the queue was full

    def snapshot(self) -> dict[str, float]:
        return {f"hosted_cache_{k}": float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class HostedCacheAddress:
    """Where the hosted cache takes offers and serves blocks."""

    host: str
    https_port: int = 443
    pccrr_port: int = 80

    def url(self, version: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if version == 1:
            return f"https://{host}:{self.https_port}{pchc.PATH_V1}"
        return f"http://{host}:{self.pccrr_port}{pchc.PATH_V2}"

    @property
    def pccrr(self) -> str:
        """``host:port`` of its PCCRR server, as the retrieval client takes peers."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.pccrr_port}"


class Offerer:
    """Offers segments to the hosted cache from a bounded queue; an async context manager.

    ``where`` gives the hosted cache's address now (None while unknown, e.g. DNS-SD has not
    found one yet); ``own_port`` is the port of this node's PCCRR server, named in offers.
    """

    def __init__(
        self,
        where: Callable[[], HostedCacheAddress | None],
        own_port: int,
        *,
        version: int = 1,
        ssl_context: ssl.SSLContext | None = None,
        queue_limit: int = 1024,
        local_host: str | None = None,
    ) -> None:
        self._where, self._own_port, self._version = where, own_port, version
        # The hosted cache connects back to the address the offer came from ([MS-PCHC] 3.2.5):
        # offers leave from the address our PCCRR server listens on, when it is a specific one.
        self._local_host = local_host
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self._queue: asyncio.Queue[tuple[Segment, HashAlgorithm]] = asyncio.Queue(queue_limit)
        self.stats = OfferStats()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Offerer:
        self._loop = asyncio.get_running_loop()
        timeout = aiohttp.ClientTimeout(total=OFFER_TIMEOUT)
        local = None if self._local_host is None else (self._local_host, 0)
        connector = aiohttp.TCPConnector(local_addr=local)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        )
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def offer(self, segment: Segment, algorithm: HashAlgorithm) -> None:
        """Queue a completed segment for offering; never waits. Callable from any thread (the
        engine stores blocks in worker threads)."""
        loop = self._loop
        if loop is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._enqueue(segment, algorithm)
        else:
            loop.call_soon_threadsafe(self._enqueue, segment, algorithm)

    def _enqueue(self, segment: Segment, algorithm: HashAlgorithm) -> None:
        try:
            self._queue.put_nowait((segment, algorithm))
        except asyncio.QueueFull:
            self.stats.offers_skipped += 1

    async def drained(self) -> None:
        """Return once every queued offer has been made (benchmarks, tests)."""
        await self._queue.join()

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            batch = [first]
            # v2.0 carries up to 128 segments per message: take what is waiting already.
            while len(batch) < pchc.MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._offer(batch)
            except (aiohttp.ClientError, TimeoutError, OSError, DecodeError) as exc:
                self.stats.offers_failed += len(batch)
                log.info("offer to the hosted cache failed: %s", exc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _offer(self, batch: Sequence[tuple[Segment, HashAlgorithm]]) -> None:
        where = self._where()
        if where is None:
            raise OSError("no hosted cache known yet")
        by_v1 = [item for item in batch if self._version == 1 and item[1].version == 1]
        by_v2 = [item for item in batch if item not in by_v1]
        for segment, algorithm in by_v1:
            offer = V1Offer(segment, algorithm, self._own_port, CONTENT_TAG)
            body = offer.start()
            while True:
                step = offer.answer(await self._post(where.url(1), body, tls=True))
                if step.step is Step.DONE:
                    break
                body = step.body
            self.stats.segments_offered += 1
        if by_v2:
            descriptors = (pchc_client.descriptor(s, a, CONTENT_TAG) for s, a in by_v2)
            for body in pchc_client.batched_offers(self._own_port, descriptors):
                answer = await self._post(where.url(2), body, tls=False)
                if not pchc_client.batch_accepted(answer):
                    raise DecodeError("BATCHED_OFFER not answered OK")
            self.stats.segments_offered += len(by_v2)

    async def _post(self, url: str, body: bytes, *, tls: bool) -> bytes:
        assert self._session is not None
        async with self._session.post(url, data=body, ssl=self._ssl if tls else False) as r:
            if r.status != 200:
                raise OSError(f"the hosted cache answered HTTP {r.status}")
            return await r.content.read(pchc.RESPONSE_SIZE + 1)


class HostedCacheFirst:
    """The engine's peer network in hosted cache mode: the hosted cache first, then the LAN."""

    def __init__(
        self,
        swarm: Swarm,
        client: RetrievalClient,
        where: Callable[[], HostedCacheAddress | None],
        *,
        request_timeout: float = 2.0,
    ) -> None:
        self.swarm, self.client, self._where = swarm, client, where
        self.request_timeout = request_timeout

    async def locate(
        self,
        segment_ids: Sequence[bytes],
        *,
        timeout: float,
        probed: Callable[[bool], None] | None = None,
    ) -> Mapping[bytes, int]:
        where = self._where()
        held: dict[bytes, int] = {}
        if where is not None:
            counts = await asyncio.gather(
                *(self._count(where, sid, timeout) for sid in segment_ids)
            )
            held = {sid: n for sid, n in zip(segment_ids, counts, strict=True) if n}
        rest = [sid for sid in segment_ids if sid not in held]
        if rest:
            for sid, n in (await self.swarm.locate(rest, timeout=timeout, probed=probed)).items():
                held[sid] = n
        return held

    async def _count(self, where: HostedCacheAddress, segment_id: bytes, timeout: float) -> int:
        try:
            answer = await self.client.get_block_list(
                where.pccrr, segment_id, _ALL_BLOCKS, timeout=min(timeout, self.request_timeout)
            )
        except PeerError:
            return 0
        return sum(r.count for r in answer.ranges)

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        where = self._where()
        if where is not None:
            seg = ref.segment
            with contextlib.suppress(PeerError):
                data = await self.client.get_block(
                    where.pccrr,
                    seg.segment_id,
                    ref.index,
                    seg.secret,
                    ref.end - ref.start,
                    timeout=min(timeout, self.request_timeout),
                )
                if data is not None and algorithm.digest(data) == ref.hash:
                    return data
        return await self.swarm.fetch(ref, algorithm, timeout=timeout)

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        """With a hosted cache, each block as :meth:`fetch` gets it (the hosted cache first);
        without one, runs from LAN peers."""
        if self._where() is None:
            return await self.swarm.fetch_run(refs, algorithm, timeout=timeout)
        found = await asyncio.gather(
            *(self.fetch(ref, algorithm, timeout=timeout) for ref in refs), return_exceptions=True
        )
        for n, item in enumerate(found):
            if isinstance(item, BaseException) and (n == 0 or not isinstance(item, Exception)):
                raise item  # as fetch_run: later blocks that failed stay None
        return [None if isinstance(item, BaseException) else item for item in found]

    def prefetch_hint(self, segment_ids: Sequence[bytes]) -> None:
        self.swarm.prefetch_hint(segment_ids)

    def add_holder(self, segment_ids: Sequence[bytes], endpoint: str) -> None:
        self.swarm.add_holder(segment_ids, endpoint)

    def at_limit(self, segment_id: bytes) -> bool:
        # The hosted cache is asked first whatever the LAN peers grant.
        return self._where() is None and self.swarm.at_limit(segment_id)

    async def slot_freed(
        self, segment_id: bytes, *, timeout: float, among: Sequence[str] = ()
    ) -> None:
        await self.swarm.slot_freed(segment_id, timeout=timeout, among=among)
