"""Fetching a run of consecutive blocks of one segment from a peer in one exchange.

Two daemons moved blocks at a tenth of LAN speed because every 64 KiB block cost an HTTP
exchange, a task, a future and a store call on each side (docs/benchmarks.md). A run asks a
peer for up to ``RUN_LIMIT`` blocks at once on the RUN_PATH extension (``proto.pccrr``);
the answers are decrypted and verified in a worker thread as one batch (hashlib releases the
GIL, so the event loop keeps moving bytes meanwhile). Every block is still checked against
its own hash before it is handed on ([MS-PCCRC] 4.1.2). Peers that do not know the extension
(Windows) answer 404; they are remembered and asked one block per request, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from peerdistd.errors import PeerUnavailable
from peerdistd.net.retrieval_client import RUN_BLOCK_MAX
from peerdistd.net.types import PeerBusy, PeerError, PeerProtocolError
from peerdistd.proto import pccrr_client
from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from peerdistd.proto.pccrr import RUN_LIMIT, Blk

if TYPE_CHECKING:
    from peerdistd.net.swarm import Swarm

log = logging.getLogger(__name__)

BUSY_BACKOFF: Final = 0.05  # seconds before asking a busy peer set again (as Swarm.fetch)
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
    """Whether ``refs`` can go as one run: consecutive V1-sized blocks of one segment."""
    if not 1 < len(refs) <= RUN_LIMIT:
        return False
    seg = refs[0].segment
    first = refs[0].index
    return all(
        r.segment is seg and r.index == first + n and r.end - r.start <= RUN_BLOCK_MAX
        for n, r in enumerate(refs)
    )


def open_blocks(
    blocks: Sequence[Blk | None], refs: Sequence[BlockRef], algorithm: HashAlgorithm
) -> tuple[list[bytes | None], list[int]]:
    """Plaintexts of ``blocks`` verified against ``refs``' hashes (None where the peer sent
    none or the block failed), and the indexes that failed decryption or the hash check.
    Runs in a worker thread."""
    out: list[bytes | None] = []
    bad: list[int] = []
    secret = refs[0].segment.secret
    for blk, ref in zip(blocks, refs, strict=False):
        data = None
        if blk is not None:
            with contextlib.suppress(pccrr_client.UnexpectedAnswer):
                (data,) = pccrr_client.decrypt_block(blk, secret, ref.end - ref.start)
            if data is None or algorithm.digest(data) != ref.hash:
                data = None
                bad.append(ref.index)
        out.append(data)
    return out, bad


async def fetch_run(
    swarm: Swarm, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
) -> list[bytes | None]:
    """Each block of ``refs`` verified, or None if no peer delivered it.

    Raises PeerUnavailable, as :meth:`Swarm.fetch` does, if time ran out before the first
    block came. Blocks a run did not bring are asked for one by one (other peers too).
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
        left = deadline - loop.time()
        try:
            results[n] = await swarm.fetch(refs[n], algorithm, timeout=max(0.0, left))
        except PeerUnavailable:
            if n == 0:
                raise

    outcome = await asyncio.gather(*(single(n) for n in missing), return_exceptions=True)
    for item in outcome:
        if isinstance(item, BaseException):
            raise item
    return results


async def _one_run(
    swarm: Swarm, refs: Sequence[BlockRef], algorithm: HashAlgorithm, deadline: float
) -> list[bytes | None] | None:
    """The run from the first holder that speaks RUN_PATH; None if none answered it."""
    loop = asyncio.get_running_loop()
    seg = refs[0].segment
    candidates = await swarm.holders(seg.segment_id, max(0.0, deadline - loop.time()))
    candidates = [p for p in candidates if p not in swarm.single_peers]
    if not candidates:
        return None
    start = refs[0].index // RUN_LIMIT % len(candidates)  # runs spread over the holders
    queue = candidates[start:] + candidates[:start]
    busy: list[str] = []
    while queue or busy:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        if not queue:
            await asyncio.sleep(min(BUSY_BACKOFF, remaining))
            queue, busy = busy, []
            continue
        peer = queue.pop(0)
        if swarm.banned(peer):
            continue
        try:
            blocks = await swarm.client.get_block_run(
                peer,
                seg.segment_id,
                refs[0].index,
                len(refs),
                timeout=min(swarm.request_timeout, remaining),
            )
        except PeerBusy:
            swarm.stats.busy_answers += 1
            busy.append(peer)
            continue
        except PeerProtocolError as exc:
            # Most likely a server without the extension (404): not a fault, ask it singly.
            # A peer that really misbehaves is banned by the one-block path.
            log.debug("peer %s refused a run (%s): asking it one block at a time", peer, exc)
            swarm.single_peers.add(peer)
            continue
        except PeerError as exc:  # timeout, unreachable: try the others
            swarm.stats.peer_errors += 1
            swarm.peer(peer).errors += 1
            log.debug("peer %s failed: %s", peer, exc)
            continue
        good, bad = await loop.run_in_executor(None, open_blocks, blocks, refs, algorithm)
        if bad:
            swarm.stats.bad_blocks += len(bad)
            swarm.peer(peer).bad_blocks += len(bad)
            swarm.ban(
                peer, f"blocks {bad} of segment {seg.segment_id.hex()[:16]} failed verification"
            )
        swarm.delivered(peer, sum(len(d) for d in good if d))
        return good
    return None
