"""The peer swarm: who holds a segment (PCCRD) and getting its blocks from them (PCCRR).

It implements the engine's ``PeerNetwork`` seam. Blocks of one read are spread over the peers
that answered (block index modulo peer count picks the first peer to ask), each peer has a
bounded number of requests in flight (the client's per-host connection limit), and every
block is verified against its hash before it is handed on ([MS-PCCRC] 4.1.2). A peer that
sends a block that does not verify, or malformed answers, is banned for ``ban_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from peerdistd.errors import PeerUnavailable
from peerdistd.net.discovery import Discovery
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.swarm_runs import SinglePeers, fetch_run
from peerdistd.net.types import PeerBusy, PeerError, PeerProtocolError
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm

log = logging.getLogger(__name__)

MAX_BANS = 4096  # bounded: peers are remote input
MAX_HOLDER_SEGMENTS = 8192
MAX_PEER_STATS = 1024
BUSY_BACKOFF = 0.05  # seconds before asking a busy peer set again


@dataclass(slots=True)
class PeerStats:
    """What this node saw of one peer (keyed by its XAddr)."""

    bytes_from: int = 0  # verified block bytes fetched from it
    bad_blocks: int = 0
    errors: int = 0
    last_seen: float = 0.0  # wall clock of the last answer (discovery or retrieval)


@dataclass(slots=True)
class SwarmStats:
    bad_blocks: int = 0
    banned_peers: int = 0
    peer_errors: int = 0
    busy_answers: int = 0

    def snapshot(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


class Swarm:
    """Locate segments on the LAN and fetch verified blocks from the peers that hold them."""

    def __init__(
        self,
        discovery: Discovery,
        client: RetrievalClient,
        *,
        window: float = 0.3,
        request_timeout: float = 2.0,
        ban_seconds: float = 300.0,
        own_addresses: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery = discovery
        self.client = client
        self.window = window
        self.request_timeout = request_timeout
        self.ban_seconds = ban_seconds
        self.own = set(own_addresses)
        self.stats = SwarmStats()
        self._clock = clock
        self._bans: OrderedDict[str, float] = OrderedDict()
        self._holders: OrderedDict[bytes, list[str]] = OrderedDict()
        self._hints: set[asyncio.Task[object]] = set()
        self.peers: OrderedDict[str, PeerStats] = OrderedDict()  # bounded: remote input
        self.single_peers = SinglePeers()  # peers without the run extension (swarm_runs)

    # -- bans ----------------------------------------------------------------------------

    def banned(self, peer: str) -> bool:
        until = self._bans.get(peer)
        if until is None:
            return False
        if until <= self._clock():
            del self._bans[peer]
            return False
        return True

    def ban(self, peer: str, why: str) -> None:
        if not self.banned(peer):
            self.stats.banned_peers += 1
            log.warning("banning peer %s for %.0f s: %s", peer, self.ban_seconds, why)
        self._bans[peer] = self._clock() + self.ban_seconds
        self._bans.move_to_end(peer)
        while len(self._bans) > MAX_BANS:
            self._bans.popitem(last=False)

    def peer(self, xaddr: str) -> PeerStats:
        stats = self.peers.get(xaddr)
        if stats is None:
            stats = self.peers[xaddr] = PeerStats()
            while len(self.peers) > MAX_PEER_STATS:
                self.peers.popitem(last=False)
        self.peers.move_to_end(xaddr)
        return stats

    def active_bans(self) -> int:
        return sum(1 for peer in list(self._bans) if self.banned(peer))

    # -- locate --------------------------------------------------------------------------

    async def locate(self, segment_ids: Sequence[bytes], *, timeout: float) -> Mapping[bytes, int]:
        window = max(0.0, min(self.window, timeout))
        found = await self.discovery.find(segment_ids, window=window)
        result: dict[bytes, int] = {}
        now = time.time()
        for sid, hits in found.items():
            for hit in hits:
                if hit.xaddr not in self.own:
                    self.peer(hit.xaddr).last_seen = now
            peers = [h.xaddr for h in hits if h.xaddr not in self.own and not self.banned(h.xaddr)]
            if not peers:
                continue
            self._holders[sid] = peers
            self._holders.move_to_end(sid)
            result[sid] = max(h.block_count for h in hits if h.xaddr in peers)
        while len(self._holders) > MAX_HOLDER_SEGMENTS:
            self._holders.popitem(last=False)
        return result

    def prefetch_hint(self, segment_ids: Sequence[bytes]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(
            self.locate(list(segment_ids), timeout=self.window)
        )
        self._hints.add(task)
        task.add_done_callback(self._hints.discard)

    # -- fetch ---------------------------------------------------------------------------

    async def holders(self, segment_id: bytes, timeout: float) -> list[str]:
        """Peers known to hold the segment (located now if unknown), banned ones left out."""
        holders = self._holders.get(segment_id)
        if holders is None:
            await self.locate([segment_id], timeout=timeout)
            holders = self._holders.get(segment_id, [])
        return [p for p in holders if not self.banned(p)]

    def delivered(self, peer: str, nbytes: int) -> None:
        """Count verified bytes from ``peer``."""
        stats = self.peer(peer)
        stats.bytes_from += nbytes
        stats.last_seen = time.time()

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        """Consecutive blocks of one segment, each verified or None (see swarm_runs)."""
        return await fetch_run(self, refs, algorithm, timeout=timeout)

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        deadline = self._clock() + timeout
        seg = ref.segment
        holders = self._holders.get(seg.segment_id)
        if holders is None:
            await self.locate([seg.segment_id], timeout=timeout)
            holders = self._holders.get(seg.segment_id, [])
        candidates = [p for p in holders if not self.banned(p)]
        if not candidates:
            return None
        # Different blocks start at different peers, so one read pulls from all of them.
        start = ref.index % len(candidates)
        queue = candidates[start:] + candidates[:start]
        busy: list[str] = []
        while queue or busy:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise PeerUnavailable(f"no peer delivered block {ref.index} in time")
            if not queue:  # everyone left was busy: give them a moment, then ask again
                await asyncio.sleep(min(BUSY_BACKOFF, remaining))
                queue, busy = busy, []
                continue
            peer = queue.pop(0)
            if self.banned(peer):
                continue
            try:
                data = await self.client.get_block(
                    peer,
                    seg.segment_id,
                    ref.index,
                    seg.secret,
                    ref.end - ref.start,
                    timeout=min(self.request_timeout, remaining),
                )
            except PeerBusy:
                self.stats.busy_answers += 1
                busy.append(peer)
                continue
            except PeerProtocolError as exc:
                self.stats.peer_errors += 1
                self.peer(peer).errors += 1
                self.ban(peer, str(exc))
                continue
            except PeerError as exc:  # timeout, unreachable: try the others
                self.stats.peer_errors += 1
                self.peer(peer).errors += 1
                log.debug("peer %s failed: %s", peer, exc)
                continue
            if data is None:
                continue  # this peer does not have it after all
            if algorithm.digest(data) != ref.hash:
                self.stats.bad_blocks += 1
                self.peer(peer).bad_blocks += 1
                self.ban(
                    peer,
                    f"block {ref.index} of segment {seg.segment_id.hex()[:16]} failed verification",
                )
                continue
            stats = self.peer(peer)
            stats.bytes_from += len(data)
            stats.last_seen = time.time()
            return data
        return None

    async def aclose(self) -> None:
        for task in list(self._hints):
            task.cancel()
        if self._hints:
            await asyncio.gather(*self._hints, return_exceptions=True)
