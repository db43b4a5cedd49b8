"""The hosted cache's pulls: after an offer, fetch the offered blocks from the offerer (PCCRR).

[MS-PCHC] 3.2.5.2-3: the hosted cache connects back to the offerer's address at the port the
offer named and asks for the blocks with MSG_GETBLKS, one block per request (PROTOCOLS.md 4).
V1 blocks are checked against the hashes SEGMENT_INFO carried before they are kept, under
either reading of the key (the spec's first keylen bytes of Kp, or the whole Kp as
Microsoft's suite uses it); blocks of a BATCHED_OFFER are kept encrypted as they came.

Bounded everywhere: a queue of offered segments (past it offers are answered but not
pulled), a number of pulls at once, a per-offerer byte rate, and one pull per segment at a
time whoever offers it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Final, Protocol

from peerdistd.errors import PeerDistError
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.proto import blockcrypto, pccrr_client
from peerdistd.proto.pccrc import HashAlgorithm, Segment
from peerdistd.proto.pccrr import Blk, CryptoAlgo
from peerdistd.proto.pccrr_client import UnexpectedAnswer
from peerdistd.proto.pchc_server import OpaquePull, Pull, VerifiedPull

log = logging.getLogger(__name__)

PULL_TIMEOUT: Final = 15.0  # per block; generous: offerers are often busy reading
_MAX_RATES: Final = 1024  # offerers whose rate is tracked (remote input: bounded)


class VerifiedSink(Protocol):
    """Where verified V1 blocks go: the node's block cache."""

    def held_blocks(self, segment_id: bytes) -> Sequence[int]: ...

    def accept_segment(self, segment: Segment, algorithm: HashAlgorithm) -> None: ...

    def put_block(self, segment_id: bytes, index: int, data: bytes, block_hash: bytes) -> None:
        """Store a block already checked against ``block_hash`` (durable after ``commit``)."""
        ...

    def commit(self) -> None:
        """Make the blocks put so far durable."""
        ...


class UnverifiedSink(Protocol):
    """Where blocks that cannot be verified go, kept as received (v2 offers)."""

    def held_blocks(self, segment_id: bytes) -> Sequence[int]: ...

    def keep(
        self, segment_id: bytes, index: int, crypto: int, iv: bytes, block: bytes, offerer: str
    ) -> bool:
        """False when not kept (held already, or over the offerer's share)."""
        ...


@dataclass
class PullStats:
    offers: int = 0
    offers_dropped: int = 0
    segments_queued: int = 0
    segments_skipped: int = 0  # the queue was full
    blocks_pulled: int = 0  # verified, kept in the cache
    bytes_pulled: int = 0
    unverified_blocks: int = 0  # kept encrypted (v2 offers)
    unverified_bytes: int = 0
    unverified_refused: int = 0  # over the store's share for that offerer, or held already
    bad_blocks: int = 0  # failed verification (or impossible sizes): not kept
    pull_errors: int = 0

    def snapshot(self) -> dict[str, float]:
        return {f"hosted_cache_{k}": float(v) for k, v in asdict(self).items()}


class _Rate:
    """A token bucket of bytes per second (0 = unlimited)."""

    def __init__(self, rate: int, clock: Callable[[], float]) -> None:
        self.rate, self._clock = rate, clock
        self._level, self._stamp = float(rate), clock()

    def delay(self, size: int) -> float:
        """Seconds to wait before ``size`` more bytes may be pulled."""
        if self.rate <= 0:
            return 0.0
        now = self._clock()
        self._level = min(float(self.rate), self._level + (now - self._stamp) * self.rate)
        self._stamp = now
        self._level -= size
        return 0.0 if self._level >= 0 else -self._level / self.rate


class Puller:
    """Pulls offered segments with ``slots`` workers; an async context manager."""

    def __init__(
        self,
        client: RetrievalClient,
        verified: VerifiedSink,
        unverified: UnverifiedSink | None,
        *,
        slots: int = 16,
        offerer_rate: int = 0,
        queue_limit: int = 4096,
        stats: PullStats | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.verified, self.unverified = verified, unverified
        self.slots, self.offerer_rate = slots, offerer_rate
        self.stats = stats or PullStats()
        self._clock = clock
        self._queue: asyncio.Queue[tuple[str, Pull]] = asyncio.Queue(queue_limit)
        self._busy: set[bytes] = set()  # segments being pulled now
        self._rates: OrderedDict[str, _Rate] = OrderedDict()
        self._workers: list[asyncio.Task[None]] = []
        self._inflight = asyncio.Semaphore(slots)  # blocks being fetched, in all

    async def __aenter__(self) -> Puller:
        self._workers = [asyncio.ensure_future(self._work()) for _ in range(self.slots)]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def submit(self, offerer: str, pulls: Sequence[Pull]) -> None:
        """Queue the pulls an offer from ``offerer`` (an IP address) asked for."""
        for pull in pulls:
            try:
                self._queue.put_nowait((offerer, pull))
                self.stats.segments_queued += 1
            except asyncio.QueueFull:
                self.stats.segments_skipped += 1

    async def drained(self) -> None:
        """Return once everything queued so far has been pulled (benchmarks, tests)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            offerer, pull = await self._queue.get()
            try:
                if pull.segment_id not in self._busy:
                    self._busy.add(pull.segment_id)
                    try:
                        await self._pull(offerer, pull)
                    finally:
                        self._busy.discard(pull.segment_id)
            except (PeerDistError, OSError) as exc:
                self.stats.pull_errors += 1
                log.debug("pulling from %s stopped: %s", offerer, exc)
            finally:
                self._queue.task_done()

    async def _pull(self, offerer: str, pull: Pull) -> None:
        endpoint = f"[{offerer}]:{pull.port}" if ":" in offerer else f"{offerer}:{pull.port}"
        if isinstance(pull, VerifiedPull):
            await self._pull_verified(offerer, endpoint, pull)
        elif self.unverified is not None:
            await self._pull_unverified(offerer, endpoint, pull)

    async def _fetch(
        self, offerer: str, endpoint: str, segment_id: bytes, index: int
    ) -> Blk | None:
        answer = await self.client.get_block_cipher(
            endpoint, segment_id, index, crypto=CryptoAlgo.AES_128, timeout=PULL_TIMEOUT
        )
        if answer is not None:
            wait = self._rate(offerer).delay(len(answer.block))
            if wait:
                await asyncio.sleep(wait)  # the per-offerer rate (hosted_cache.offerer_rate)
        return answer

    def _rate(self, offerer: str) -> _Rate:
        rate = self._rates.get(offerer)
        if rate is None:
            rate = self._rates[offerer] = _Rate(self.offerer_rate, self._clock)
            while len(self._rates) > _MAX_RATES:
                self._rates.popitem(last=False)
        self._rates.move_to_end(offerer)
        return rate

    async def _each_block(
        self, indexes: Sequence[int], fetch: Callable[[int], Awaitable[bool]]
    ) -> None:
        """``fetch(i)`` for each index, many at once but at most ``slots`` blocks in flight in
        all; after the first that returns False (a bad or missing block) no more are asked."""
        stop = False

        async def one(index: int) -> None:
            nonlocal stop
            async with self._inflight:
                if not stop and not await fetch(index):
                    stop = True

        try:
            async with asyncio.TaskGroup() as group:
                for index in indexes:
                    group.create_task(one(index))
        except ExceptionGroup as failed:  # the first failure stands for the rest
            raise failed.exceptions[0] from None

    async def _pull_verified(self, offerer: str, endpoint: str, pull: VerifiedPull) -> None:
        seg, algorithm = pull.segment, pull.algorithm
        held = set(self.verified.held_blocks(seg.segment_id))
        accepted = False

        async def fetch(index: int) -> bool:
            nonlocal accepted
            answer = await self._fetch(offerer, endpoint, seg.segment_id, index)
            if answer is None:
                return False  # the offerer does not have it (any more)
            length = min(seg.block_size, seg.length - index * seg.block_size)
            expected = seg.block_hashes[index]
            try:
                plains = pccrr_client.decrypt_block(answer, seg.secret, length, either_reading=True)
            except UnexpectedAnswer:
                plains = []
            good = next((p for p in plains if algorithm.digest(p) == expected), None)
            if good is None:
                self.stats.bad_blocks += 1
                log.warning(
                    "offerer %s sent block %d of segment %s that fails its hash: not kept",
                    offerer,
                    index,
                    seg.segment_id.hex()[:16],
                )
                return False  # nothing more from this offerer for this segment
            if not accepted:  # the segment is recorded only once one of its blocks verified
                self.verified.accept_segment(seg, algorithm)
                accepted = True
            self.verified.put_block(seg.segment_id, index, good, expected)
            self.stats.blocks_pulled += 1
            self.stats.bytes_pulled += len(good)
            return True

        try:
            await self._each_block([i for i in pull.blocks if i not in held], fetch)
        finally:
            if accepted:
                self.verified.commit()  # one sync for the segment's blocks

    async def _pull_unverified(self, offerer: str, endpoint: str, pull: OpaquePull) -> None:
        assert self.unverified is not None
        unverified = self.unverified
        held = set(unverified.held_blocks(pull.segment_id))
        held |= set(self.verified.held_blocks(pull.segment_id))

        async def fetch(index: int) -> bool:
            answer = await self._fetch(offerer, endpoint, pull.segment_id, index)
            if answer is None:
                return False
            length = pull.plaintext_length(index)
            if not _plausible(answer, length):
                self.stats.bad_blocks += 1
                return False
            kept = unverified.keep(
                pull.segment_id, index, answer.crypto, answer.iv, answer.block, offerer
            )
            if kept:
                self.stats.unverified_blocks += 1
                self.stats.unverified_bytes += length
            else:
                self.stats.unverified_refused += 1
            return True

        await self._each_block([i for i in pull.blocks if i not in held], fetch)


def _plausible(answer: Blk, length: int) -> bool:
    """What cannot be checked is at least of the right shape: the Block field of a block of
    ``length`` bytes under the algorithm the offerer says it used ([MS-PCCRR] 2.2.5.3, 2.4)."""
    try:
        keyed = blockcrypto.key_size(answer.crypto) > 0
    except PeerDistError:
        return False
    if not keyed:
        return len(answer.block) == length and not answer.iv
    size = len(answer.block)
    aligned = size % blockcrypto.AES_BLOCK == 0
    return aligned and length <= size <= length + blockcrypto.AES_BLOCK and len(answer.iv) == 16
