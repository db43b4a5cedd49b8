"""The peer swarm: who holds a segment (PCCRD) and getting its blocks from them (PCCRR).

It implements the engine's ``PeerNetwork`` seam. Blocks of one read are spread over the peers
that answered (block index modulo peer count picks the first peer to ask), each peer has a
bounded number of requests in flight (the client's per-host connection limit), and every
block is verified against its hash before it is handed on ([MS-PCCRC] 4.1.2).

A block not delivered within the hedge delay (:mod:`hedging`) is asked of the next holder
too, and the first verified answer wins. A request already sent to the slower peer is left to
finish (within its own timers) so that peer is judged: a peer that sends a bad block or a
malformed answer is banned at once, one that times out, trickles under the floor rate or
resets is backed off and banned after ``failures_to_ban`` failures in a row (:mod:`peer_health`).

A peer at its upload limit (busy answers) is not asked again until the window of upload
slots it grants us has room (:mod:`peer_windows`): when every holder left is at its limit,
:meth:`Swarm.fetch` raises PeersBusy and the engine waits (:meth:`Swarm.slot_freed`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from peerdistd.errors import PeersBusy, PeerUnavailable
from peerdistd.net.discovery import Discovery
from peerdistd.net.discovery_rounds import Rounds, wait_for
from peerdistd.net.hedging import LatencyWindow
from peerdistd.net.holders import MAX_HOLDER_SEGMENTS, HolderDirectory
from peerdistd.net.peer_health import FAILURES_TO_BAN, PeerHealth, PeerStats
from peerdistd.net.peer_windows import Outcome, PeerWindows
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.swarm_runs import SinglePeers, fetch_run
from peerdistd.net.types import (
    PeerBusy,
    PeerError,
    PeerProtocolError,
    PeerSlow,
    PeerTimeout,
    Progress,
)
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from peerdistd.proto.pccrr import BlockRange

__all__ = ["MAX_HOLDER_SEGMENTS", "PeerStats", "Swarm", "SwarmStats"]

log = logging.getLogger(__name__)

MAX_ASKS: Final = 3  # holders asked for one block at once (the first and its hedges)
# A segment whose holders are unknown (or were wrongly guessed) is asked about with up to this
# many segments after it, and before it, that have no answer either (holders.py): at most 55,
# four V2 probes of 14 ids. Before it: a run's blocks (up to 16) whose guesses are being tried.
ASK_AHEAD: Final = 41
ASK_BEHIND: Final = 14
ASK_STEPS: Final = 64  # linked segments looked through each way (a V2 read-ahead)
_UNEXPECTED_LOGGED: Final = 64  # distinct unexpected errors logged with a traceback


@dataclass(slots=True)
class SwarmStats:
    bad_blocks: int = 0
    peer_errors: int = 0
    busy_answers: int = 0
    slow_answers: int = 0  # answers under the floor rate (peers.min_transfer_rate)
    hedges: int = 0  # blocks asked of a second or third holder before the first answered

    def snapshot(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


class _Busy:
    """A holder answered that it is at its upload limit."""


BUSY: Final = _Busy()


@dataclass(slots=True)
class _Ask:
    """One holder asked for one block."""

    peer: str
    started: float  # swarm clock
    progress: Progress = field(default_factory=Progress)
    overdue: bool = False  # counted in the peer's ``overdue`` until the request ends


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
        failures_to_ban: int = FAILURES_TO_BAN,
        min_rate: float = 0.0,
        own_addresses: Sequence[str] = (),
        window_limit: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.discovery = discovery
        self.client = client
        self.window = window
        self.request_timeout = request_timeout
        self.min_rate = min_rate  # bytes/s an answer must reach; 0: no floor
        self.own = set(own_addresses)
        self.stats = SwarmStats()
        self.health = PeerHealth(
            ban_seconds=ban_seconds, failures_to_ban=failures_to_ban, clock=clock
        )
        self.latency = LatencyWindow()
        self.windows = PeerWindows(window_limit, self._probe)  # upload slots peers grant us
        self._clock = clock
        self.directory = HolderDirectory(clock=clock)  # who holds which segment
        self._hints: set[asyncio.Task[object]] = set()
        self.rounds = Rounds()  # discovery rounds in flight, by segment
        self._lingering: set[asyncio.Task[bytes | None]] = set()
        self._unexpected: set[str] = set()
        # Runs of blocks in one exchange (swarm_runs): peers without the extension, the
        # latencies of runs (their own hedge delay), runs left to finish after a hedge.
        self.single_peers = SinglePeers()
        self.run_latency = LatencyWindow()
        self.lingering_runs: set[asyncio.Future[Any]] = set()

    # -- peers (PeerHealth) --------------------------------------------------------------

    @property
    def peers(self) -> OrderedDict[str, PeerStats]:
        return self.health.peers

    @property
    def ban_seconds(self) -> float:
        return self.health.ban_seconds

    @ban_seconds.setter
    def ban_seconds(self, value: float) -> None:
        self.health.ban_seconds = value

    @property
    def failures_to_ban(self) -> int:
        return self.health.failures_to_ban

    @failures_to_ban.setter
    def failures_to_ban(self, value: int) -> None:
        self.health.failures_to_ban = value

    def banned(self, peer: str) -> bool:
        return self.health.banned(peer)

    def ban(self, peer: str, why: str) -> None:
        self.health.ban(peer, why)

    def peer(self, xaddr: str) -> PeerStats:
        return self.health.peer(xaddr)

    def active_bans(self) -> int:
        return self.health.active_bans()

    # -- locate --------------------------------------------------------------------------

    async def locate(
        self,
        segment_ids: Sequence[bytes],
        *,
        timeout: float,
        probed: Callable[[bool], None] | None = None,
    ) -> Mapping[bytes, int]:
        """Holders from the directory; segments it has no answer for are first guessed from
        their content's recent servers, else found by discovery (one probe round, which
        ``probed`` hears of)."""
        ids = list(dict.fromkeys(segment_ids))
        self.directory.link(ids)
        result: dict[bytes, int] = {}
        unknown: list[bytes] = []
        for sid in ids:
            known = self._usable(sid)
            if known is None:
                if self.directory.guess(sid, self._usable_peer):
                    result[sid] = 1
                else:
                    unknown.append(sid)
            elif known:
                result[sid] = max(known.values())
        if unknown:
            # Segments a round in flight asks about already are not asked about again: that
            # round is waited for (within our timeout); ours ends with its own window, which
            # is ours (as before the rounds were shared).
            others = {r for sid in unknown if (r := self.rounds.of(sid)) is not None}
            ask = [sid for sid in unknown if sid not in self.rounds]
            mine = self.rounds.start(ask, self._discover(ask, timeout)) if ask else None
            await wait_for(others, timeout)
            if mine is not None:
                await asyncio.wait({mine})
            found = False
            for sid in unknown:
                known = self._usable(sid) or {}
                if known:
                    result[sid] = max(known.values())
                    found = True
            if probed is not None:
                probed(found)
        return result

    async def _discover(self, segment_ids: list[bytes], timeout: float) -> dict[bytes, int]:
        """One discovery round for ``segment_ids``; every answer (none included) is learnt."""
        window = max(0.0, min(self.window, timeout))
        found = await self.discovery.find(segment_ids, window=window)
        now = time.time()
        answers: dict[bytes, dict[str, int]] = {}
        for sid in segment_ids:
            hits = [h for h in found.get(sid, ()) if h.xaddr not in self.own]
            for hit in hits:
                self.peer(hit.xaddr).last_seen = now
            answers[sid] = {h.xaddr: h.block_count for h in hits}
        self.directory.learn(answers)
        result: dict[bytes, int] = {}
        for sid, peers in answers.items():
            counts = [n for p, n in peers.items() if self._usable_peer(p)]
            if counts:
                result[sid] = max(counts)
        return result

    def _usable_peer(self, peer: str) -> bool:
        return peer not in self.own and not self.banned(peer)

    def usable(self, segment_id: bytes) -> dict[str, int] | None:
        """Fresh holders of ``segment_id`` that may be asked, or None without an answer."""
        return self._usable(segment_id)

    def _usable(self, segment_id: bytes) -> dict[str, int] | None:
        """Fresh holders of ``segment_id`` that may be asked, or None without an answer."""
        known = self.directory.holders(segment_id)
        if known is None:
            return None
        return {p: n for p, n in known.items() if self._usable_peer(p)}

    def _answered(self, segment_id: bytes) -> bool:
        """Whether discovery (or a delivered block) answered for the segment: not a guess."""
        return self._usable(segment_id) is not None and not self.directory.guessed(segment_id)

    def prefetch_hint(self, segment_ids: Sequence[bytes]) -> None:
        task: asyncio.Task[object] = asyncio.ensure_future(
            self.locate(list(segment_ids), timeout=self.window)
        )
        self._hints.add(task)
        task.add_done_callback(self._hints.discard)

    # -- fetch ---------------------------------------------------------------------------

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        deadline = self._clock() + timeout
        sid = ref.segment.segment_id
        known = self._usable(sid)
        probed = False  # whether this fetch already asked the LAN
        if known is None:
            probed = await self._find(sid, timeout)
            known = self._usable(sid) or {}
        if not known:
            return None  # nobody holds it, as discovery answered just now
        guessed = self.directory.guessed(sid)
        queue = self._queue(sid, known, ref.index)
        asked = set(queue)
        data, failed = await self._race(ref, algorithm, queue, deadline) if queue else (None, False)
        if data is None and (failed or guessed) and not probed and self._clock() < deadline:
            # The holders we guessed lacked it, or those we knew failed (one died mid-read):
            # ask the LAN once more and try those we have not asked yet. Partial holders a
            # discovery answer named that lack this block are not a reason to probe again
            # (with many readers of a partly fetched content that would flood the LAN).
            # Nor is a guess that failed after a round about the segments around another
            # one answered for this one meanwhile: that answer is used as it is.
            if not (guessed and self._answered(sid)):
                await self._relocate(sid, deadline - self._clock())
            fresh = self._usable(sid) or {}
            queue = [p for p in self._queue(sid, fresh, ref.index) if p not in asked]
            if queue:
                data, _ = await self._race(ref, algorithm, queue, deadline)
        return data

    def _queue(self, segment_id: bytes, known: Mapping[str, int], index: int) -> list[str]:
        """Holders to ask for block ``index`` in turn, leaving out those that said they lack it."""
        may = [p for p in known if self.directory.may_hold(segment_id, p, index)]
        return self.health.order(may, index)

    async def holders(self, segment_id: bytes, timeout: float) -> list[str]:
        """Peers known to hold the segment (located now if unknown)."""
        known = self._usable(segment_id)
        if known is None:
            await self._find(segment_id, timeout)
            known = self._usable(segment_id) or {}
        return list(known)

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        """Consecutive blocks of one content, each verified or None (see swarm_runs)."""
        return await fetch_run(self, refs, algorithm, timeout=timeout)

    async def _find(self, segment_id: bytes, timeout: float) -> bool:
        """Holders for a segment without an answer: guessed from its content's trail, else
        asked of the LAN (:meth:`_relocate`); whether the LAN was asked."""
        if self.directory.guess(segment_id, self._usable_peer):
            return False
        await self._relocate(segment_id, timeout)
        return True

    async def _relocate(self, segment_id: bytes, timeout: float) -> None:
        """A fresh probe for ``segment_id``, shared by every block of it that needs one (and
        by the round in flight that asks about it already, if one does).

        The segments around it in its content that have no answer either (none, or only the
        trail's guess) are asked about in a second round sent at the same moment, which no
        one waits for here: when ten nodes read one content together a guess fails for
        nearly every segment, and a probe per segment flooded the LAN (holders.py). This
        read waits only for its own segment's answer, as before."""
        task = self.rounds.of(segment_id)
        if task is not None:  # asked about already: its answer is on its way
            await wait_for({task}, timeout)
        else:
            self.directory.forget([segment_id])  # not the answer we already have
            task = self.rounds.start([segment_id], self._discover([segment_id], timeout))
            near = self.directory.unanswered_near(
                segment_id, after=ASK_AHEAD, before=ASK_BEHIND, steps=ASK_STEPS
            )
            others = [sid for sid in near if sid not in self.rounds]
            if others:
                self.rounds.start(others, self._discover(others, self.window))
            await asyncio.wait({task})  # within its window, which is ours

    async def _race(
        self, ref: BlockRef, algorithm: HashAlgorithm, queue: list[str], deadline: float
    ) -> tuple[bytes | None, bool]:
        """Ask ``queue`` in turn: the next holder when one fails or lacks the block, or when
        none has answered within the hedge delay. The first verified block wins; the flag
        says whether any holder failed (rather than answer that it lacks the block)."""
        asks: dict[asyncio.Task[bytes | None], _Ask] = {}
        busy: list[str] = []
        failed = False
        hedge_at = -math.inf  # when to ask the next holder: at once
        try:
            while True:
                now = self._clock()
                if now >= deadline:
                    raise PeerUnavailable(f"no peer delivered block {ref.index} in time")
                if queue and now >= hedge_at and len(asks) < MAX_ASKS:
                    peer = queue.pop(0)
                    if self.banned(peer):
                        continue
                    if not self.windows.free(peer):  # at the limit it grants us: not asked
                        busy.append(peer)
                        continue
                    if asks:  # a hedge: those asked so far are overdue
                        self.stats.hedges += 1
                        for late in asks.values():
                            if not late.overdue:
                                late.overdue = True
                                self.health.overdue(late.peer, +1)
                    task, ask = self._ask(peer, ref, deadline - now)
                    asks[task] = ask
                    hedge_at = now + self.latency.hedge_delay()
                    continue
                if not asks:
                    if not busy:
                        return None, failed
                    # Those left are at their upload limit: not asked again here (no busy
                    # loop); the engine waits for a slot (slot_freed, [MS-PCCRR] 3.2.5.3).
                    raise PeersBusy(
                        f"{len(busy)} holder(s) of block {ref.index} are busy", tuple(busy)
                    )
                wait = deadline - now
                if queue and len(asks) < MAX_ASKS:
                    wait = min(wait, hedge_at - now)
                done, _ = await asyncio.wait(
                    asks, timeout=max(0.0, wait), return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    ask = asks.pop(task)
                    outcome = self._settle(task, ask, ref, algorithm, winner=True)
                    if isinstance(outcome, bytes):
                        self.latency.add(self._clock() - ask.started)
                        return outcome, failed
                    if outcome is BUSY:
                        busy.append(ask.peer)
                    elif not task.cancelled() and task.exception() is not None:
                        failed = True
                    hedge_at = -math.inf  # that holder is out of this race: ask the next
        finally:
            for task, ask in asks.items():
                if ask.progress.sent_at is None:
                    task.cancel()  # still waiting for a connection: nothing to learn from it
                else:
                    self._linger(task, ask, ref, algorithm)

    def _ask(
        self, peer: str, ref: BlockRef, remaining: float
    ) -> tuple[asyncio.Task[bytes | None], _Ask]:
        seg = ref.segment
        ask = _Ask(peer, self._clock())
        self.windows.begin(peer, seg.segment_id)
        task = asyncio.ensure_future(
            self.client.get_block(
                peer,
                seg.segment_id,
                ref.index,
                seg.secret,
                ref.end - ref.start,
                timeout=min(self.request_timeout, remaining),
                min_rate=self.min_rate,
                progress=ask.progress,
            )
        )

        def ended(done: asyncio.Task[bytes | None]) -> None:
            if ask.overdue:
                self.health.overdue(peer, -1)
            self.windows.end(peer, _outcome(done))

        task.add_done_callback(ended)
        return task, ask

    def _linger(
        self,
        task: asyncio.Task[bytes | None],
        ask: _Ask,
        ref: BlockRef,
        algorithm: HashAlgorithm,
    ) -> None:
        """Let a request that lost the race finish within its own timers, to judge its peer."""
        self._lingering.add(task)

        def settled(done: asyncio.Task[bytes | None]) -> None:
            self._lingering.discard(done)
            self._settle(done, ask, ref, algorithm, winner=False)

        task.add_done_callback(settled)

    def _settle(
        self,
        task: asyncio.Task[bytes | None],
        ask: _Ask,
        ref: BlockRef,
        algorithm: HashAlgorithm,
        *,
        winner: bool,
    ) -> bytes | _Busy | None:
        """Judge one finished request: the verified block, BUSY, or None (no use)."""
        if task.cancelled():
            return None
        peer = ask.peer
        exc = task.exception()
        if exc is None:
            data = task.result()
            if data is None:
                # [MS-PCCRR] 2.2.4.2: SizeOfBlock 0, "not held": another holder may have it.
                self.directory.lacks(ref.segment.segment_id, peer, ref.index)
                return None
            if algorithm.digest(data) != ref.hash:
                self.stats.bad_blocks += 1
                self.peer(peer).bad_blocks += 1
                seg_id = ref.segment.segment_id.hex()[:16]
                self.ban(peer, f"block {ref.index} of segment {seg_id} failed verification")
                return None
            self.health.answered(peer)
            self.directory.served(ref.segment.segment_id, peer)
            # Fetched from it even when another holder's copy won the race: what it sent.
            self.peer(peer).bytes_from += len(data)
            return data if winner else None
        if isinstance(exc, PeerBusy):
            self.stats.busy_answers += 1
            return BUSY
        self.stats.peer_errors += 1
        if isinstance(exc, PeerProtocolError):
            self.peer(peer).errors += 1
            self.ban(peer, str(exc))
        elif isinstance(exc, PeerError):  # timed out, too slow, unreachable, reset
            if isinstance(exc, PeerSlow):
                self.stats.slow_answers += 1
            stall = isinstance(exc, PeerTimeout) and not isinstance(exc, PeerSlow)
            self.health.failed(peer, exc.message, stall=stall)
        else:
            # Not a PeerError: a defect of ours met by what this peer did. The read goes on
            # with the other holders (or MISSING_DATA); logged with its traceback, once.
            self._log_unexpected(peer, exc)
            self.health.failed(peer, type(exc).__name__)
        return None

    def add_holder(self, segment_ids: Sequence[bytes], endpoint: str) -> None:
        """``endpoint`` holds blocks of these segments (single flight says who fetched a
        piece): ask it first, without a discovery round."""
        if not self._usable_peer(endpoint):
            return
        for sid in segment_ids:
            self.directory.named(sid, endpoint)

    def _log_unexpected(self, peer: str, exc: BaseException) -> None:
        key = f"{type(exc).__name__}: {exc}"[:200]
        if key in self._unexpected or len(self._unexpected) >= _UNEXPECTED_LOGGED:
            log.debug("unexpected error asking %s for a block: %s", peer, key)
            return
        self._unexpected.add(key)
        log.error("unexpected error asking %s for a block", peer, exc_info=exc)

    # -- flow control ("Reads are streams") ------------------------------------------------

    async def _probe(self, peer: str, segment_id: bytes) -> Outcome:
        """Has a peer at its upload limit a slot again? A one-block GETBLKLIST tells."""
        try:
            await self.client.get_block_list(
                peer, segment_id, [BlockRange(0, 1)], timeout=self.request_timeout
            )
        except PeerBusy:
            self.stats.busy_answers += 1
            return "busy"
        except PeerError:
            return "failed"
        return "answered"

    def at_limit(self, segment_id: bytes) -> bool:
        """Every peer known to hold the segment is at the upload limit it grants us."""
        holders = list(self._usable(segment_id) or ())
        return bool(holders) and not any(self.windows.free(p) for p in holders)

    async def slot_freed(
        self, segment_id: bytes, *, timeout: float, among: Sequence[str] = ()
    ) -> None:
        """Return once a peer holding the segment (one of ``among``, the holders a fetch found
        busy, when given) has an upload slot for us again (at once if one has now);
        TimeoutError after ``timeout`` seconds."""
        holders = list(among or self._usable(segment_id) or ())
        if holders:
            await self.windows.wait(holders, timeout)

    async def aclose(self) -> None:
        await self.windows.aclose()
        tasks: list[asyncio.Future[Any]] = [
            *self._hints,
            *self.rounds.tasks,
            *self._lingering,
            *self.lingering_runs,
        ]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


def _outcome(task: asyncio.Task[bytes | None]) -> Outcome:
    """What a finished request says of its peer's upload slots."""
    if task.cancelled():
        return "failed"  # never sent, or given up: says nothing
    exc = task.exception()
    if isinstance(exc, PeerBusy):
        return "busy"
    return "failed" if exc is not None else "answered"
