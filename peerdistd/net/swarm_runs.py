"""Fetching a run of consecutive blocks from a peer in one exchange.

Two daemons moved blocks at a tenth of LAN speed because every 64 KiB block cost an HTTP
exchange, a task, a future and a store call on each side (docs/benchmarks.md). A run asks a
peer for up to ``RUN_LIMIT`` blocks (at most ``RUN_BYTES``) at once on the RUN_PATH extension
(``proto.pccrr``): consecutive blocks of one V1 segment, or consecutive segments of one
content (a V2 segment is one block of at most 128 KiB, so a run within it would be one
block). The answers are decrypted, each with its own segment's key, and verified in a worker
thread as one batch (hashlib releases the GIL, so the event loop keeps moving bytes
meanwhile). Every block is still checked against its own hash before it is handed on
([MS-PCCRC] 4.1.2). Peers that do not know the extension (Windows) answer 404; they are
remembered and asked one block per request, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Literal

from peerdistd.net.retrieval_client import RUN_BLOCK_MAX
from peerdistd.net.types import PeerBusy, PeerError, PeerProtocolError, PeerSlow, PeerTimeout
from peerdistd.proto import pccrr_client
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from peerdistd.proto.pccrr import RUN_BYTES, RUN_LIMIT, Blk

if TYPE_CHECKING:
    from peerdistd.net.swarm import Swarm

log = logging.getLogger(__name__)

RUN_TRIES: Final = 2  # holders asked for one run before falling back to single blocks
# The hedge delay of a run before enough runs were timed to learn one (hedging.MIN_SAMPLES):
# a 1 MiB answer takes longer than one block's (84 ms on a 100 Mbit/s LAN). Once learnt, it
# is twice the p95 of recent runs, like a block's: a hedged run costs one more request.
RUN_HEDGE_DEFAULT: Final = 0.25
MAX_SINGLE_PEERS: Final = 1024  # peers remembered as not speaking RUN_PATH (remote input)


class SinglePeers:
    """Peers that refused RUN_PATH: asked one block per request from then on (bounded)."""

    def __init__(self) -> None:
        self._peers: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def add(self, peer: str) -> None:
        self._peers[peer] = None
        self._peers.move_to_end(peer)
        while len(self._peers) > MAX_SINGLE_PEERS:
            self._peers.popitem(last=False)


def runnable(refs: Sequence[BlockRef]) -> bool:
    """Whether ``refs`` can go as one run: 2..RUN_LIMIT consecutive blocks of one content,
    each at most RUN_BLOCK_MAX, RUN_BYTES in all (the server's caps, so it answers them all)."""
    if not 1 < len(refs) <= RUN_LIMIT:
        return False
    if sum(r.end - r.start for r in refs) > RUN_BYTES:
        return False
    prev = refs[0]
    for r in refs[1:]:
        same = r.segment is prev.segment
        if r.start != prev.end or (r.index != prev.index + 1 if same else r.index != 0):
            return False
        prev = r
    return all(r.end - r.start <= RUN_BLOCK_MAX for r in refs)


def open_blocks(
    blocks: Sequence[Blk | None], refs: Sequence[BlockRef], algorithm: HashAlgorithm
) -> tuple[list[bytes | None], list[tuple[bytes, int]]]:
    """Plaintexts of ``blocks`` verified against ``refs``' hashes (None where the peer sent
    none or the block failed), and the (segment id, index) of those that failed decryption
    with their own segment's key or the hash check. Runs in a worker thread."""
    out: list[bytes | None] = []
    bad: list[tuple[bytes, int]] = []
    for blk, ref in zip(blocks, refs, strict=False):
        data = None
        if blk is not None:
            with contextlib.suppress(pccrr_client.UnexpectedAnswer):
                (data,) = pccrr_client.decrypt_block(blk, ref.segment.secret, ref.end - ref.start)
            if data is None or algorithm.digest(data) != ref.hash:
                data = None
                bad.append((ref.segment.segment_id, ref.index))
        out.append(data)
    return out, bad


async def fetch_run(
    swarm: Swarm, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
) -> list[bytes | None]:
    """Each block of ``refs`` verified, or None if no peer delivered it.

    One run from one holder first; the blocks it did not bring (the holder lacked them,
    failed, or was slower than the hedge delay) are asked for one by one, with
    :meth:`Swarm.fetch`'s hedging over every holder. What that raises for the first block
    (PeerUnavailable, PeersBusy) is raised, as :meth:`Swarm.fetch` would for it alone.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    results: list[bytes | None] = [None] * len(refs)
    if runnable(refs):
        got = await _one_run(swarm, refs, algorithm, deadline)
        if got is not None:
            results[: len(got)] = got
    missing = [n for n, data in enumerate(results) if data is None]
    if not missing:
        return results

    async def single(n: int) -> None:
        left = max(0.0, deadline - loop.time())
        results[n] = await swarm.fetch(refs[n], algorithm, timeout=left)

    outcome = await asyncio.gather(*(single(n) for n in missing), return_exceptions=True)
    for n, item in zip(missing, outcome, strict=True):
        if isinstance(item, BaseException) and (n == 0 or not isinstance(item, Exception)):
            raise item  # later blocks that failed stay None: their reads ask again
    return results


def _run_holders(swarm: Swarm, refs: Sequence[BlockRef], first: list[str]) -> list[str]:
    """The holders of the run's first segment (``first``) to ask for the whole run: those
    not known to lack any of its segments, in the order runs spread over holders."""
    others = dict.fromkeys(
        r.segment.segment_id for r in refs[1:] if r.segment is not refs[0].segment
    )
    allowed = set(first)
    for sid in others:
        known = swarm.usable(sid)
        if known is not None:  # no answer (expired meanwhile): not a reason to skip anyone
            allowed &= set(known)
    for r in refs:
        allowed = {p for p in allowed if swarm.directory.may_hold(r.segment.segment_id, p, r.index)}
    order = swarm.health.order([p for p in first if p in allowed], refs[0].start // RUN_BYTES)
    return [p for p in order if p not in swarm.single_peers]


async def _one_run(
    swarm: Swarm, refs: Sequence[BlockRef], algorithm: HashAlgorithm, deadline: float
) -> list[bytes | None] | None:
    """The run from a holder that speaks RUN_PATH; None if none delivered it in time."""
    loop = asyncio.get_running_loop()
    first = await swarm.holders(refs[0].segment.segment_id, max(0.0, deadline - loop.time()))
    for peer in _run_holders(swarm, refs, first)[:RUN_TRIES]:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        if not swarm.windows.free(peer):  # at the limit it grants us: not asked
            continue
        blocks = await _ask(swarm, peer, refs, remaining)
        if blocks is _SLOW or blocks is None:
            # Overdue (it goes on, to be judged), busy or failed: the next holder is asked
            # for the whole run. Asking it for the blocks one by one would put up to
            # RUN_LIMIT requests in its window at once, and every other read's blocks
            # would then queue behind them (or go to the slow holder).
            continue
        assert isinstance(blocks, list)
        good, bad = await loop.run_in_executor(None, open_blocks, blocks, refs, algorithm)
        if bad:
            swarm.stats.bad_blocks += len(bad)
            swarm.peer(peer).bad_blocks += len(bad)
            where = ", ".join(f"{i} of segment {sid.hex()[:16]}" for sid, i in bad)
            swarm.ban(peer, f"blocks {where} failed verification")
            # Its other blocks passed their own hash checks: they are kept.
            swarm.peer(peer).bytes_from += sum(len(d) for d in good if d)
            return good
        swarm.health.answered(peer)
        for ref, blk, data in zip(refs, blocks, good, strict=False):
            if data is not None:
                swarm.directory.served(ref.segment.segment_id, peer)
            elif blk is None:  # [MS-PCCRR] 2.2.4.2: "not held"
                swarm.directory.lacks(ref.segment.segment_id, peer, ref.index)
        swarm.peer(peer).bytes_from += sum(len(d) for d in good if d)
        return good
    return None


class _Slow:
    """The run was not delivered within the hedge delay (it goes on, to judge its peer)."""


_SLOW: Final = _Slow()


async def _ask(
    swarm: Swarm, peer: str, refs: Sequence[BlockRef], remaining: float
) -> list[Blk | None] | _Slow | None:
    """Ask ``peer`` for the run: its MSG_BLKs, _SLOW, or None (busy, failed, no extension)."""
    loop = asyncio.get_running_loop()
    seg = refs[0].segment
    # The floor rate is judged as for the run's blocks asked one by one at once: each would
    # have had its grace plus one block at the floor rate, so the run gets that too, and a
    # trickling peer fails as PeerSlow in the same time (and is banned as soon).
    expected = max(r.end - r.start for r in refs)
    swarm.windows.begin(peer, seg.segment_id)
    started = loop.time()
    task = asyncio.ensure_future(
        swarm.client.get_block_run(
            peer,
            [(r.segment.segment_id, r.index) for r in refs],
            timeout=min(swarm.request_timeout, remaining),
            floor=(expected, swarm.min_rate),
        )
    )
    overdue = False

    def ended(done: asyncio.Task[list[Blk | None]]) -> None:
        if overdue:
            swarm.health.overdue(peer, -1)
        swarm.windows.end(peer, _outcome(done))
        _judge(swarm, peer, done, len(refs))

    task.add_done_callback(ended)
    learnt = swarm.run_latency.p95() is not None
    hedge = min(remaining, swarm.run_latency.hedge_delay() if learnt else RUN_HEDGE_DEFAULT)
    done, _ = await asyncio.wait({task}, timeout=hedge)
    if not done:
        # Overdue: the peer is asked last by others until it answers; it may still finish
        # within its own timers, and is judged then (ended).
        overdue = True
        swarm.health.overdue(peer, +1)
        swarm.stats.hedges += 1
        swarm.lingering_runs.add(task)
        task.add_done_callback(swarm.lingering_runs.discard)
        return _SLOW
    if task.cancelled() or task.exception() is not None:
        return None
    swarm.run_latency.add(loop.time() - started)
    return task.result()


def _outcome(task: asyncio.Task[list[Blk | None]]) -> Literal["answered", "busy", "failed"]:
    if task.cancelled():
        return "failed"
    exc = task.exception()
    if isinstance(exc, PeerBusy):
        return "busy"
    return "failed" if exc is not None else "answered"


def _judge(swarm: Swarm, peer: str, task: asyncio.Task[list[Blk | None]], blocks: int) -> None:
    """What a finished run request says of its peer (as Swarm judges one-block requests).

    A run that fails (other than by a stall, counted once per incident anyway) counts as
    its ``blocks`` requests failing: what asking for them one by one would have counted, so
    a peer that resets every connection is banned as soon as before (PeerHealth)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return  # blocks are judged when they are opened (open_blocks)
    if isinstance(exc, PeerBusy):
        swarm.stats.busy_answers += 1
    elif isinstance(exc, PeerProtocolError):
        # Most likely a server without the extension (404): not a fault, ask it one block
        # at a time from now on. A peer that really misbehaves is judged on that path.
        log.debug("peer %s refused a run (%s): asking it one block at a time", peer, exc)
        swarm.single_peers.add(peer)
    elif isinstance(exc, PeerError):  # timed out, too slow, unreachable, reset
        swarm.stats.peer_errors += 1
        if isinstance(exc, PeerSlow):
            swarm.stats.slow_answers += 1
        stall = isinstance(exc, PeerTimeout) and not isinstance(exc, PeerSlow)
        for _ in range(1 if stall else blocks):
            swarm.health.failed(peer, exc.message, stall=stall)
    else:
        swarm.stats.peer_errors += 1
        log.error("unexpected error asking %s for a run of blocks", peer, exc_info=exc)
        swarm.health.failed(peer, type(exc).__name__)
