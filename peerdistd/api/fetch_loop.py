"""The PeerDist fetch loop for applications: parallel reads, missing pieces from the origin.

``workers`` tasks each take the next piece (at most :data:`UNIT` bytes, aligned to it) not yet
taken and block-read it with the timeout; what the daemon reports missing (MISSING_DATA, or a
TIMEOUT twice) is taken from the origin with a MissingDataRequest ([MS-PCCRTP] 3.1) and added
back in :data:`ADD_CHUNK` pieces, so the node's claim shows progress and the branch can take
the piece from it as it arrives (docs/single-flight.md). One client alone then fetches from
the origin on several connections at once while it reads; nodes of a branch that start
together fetch disjoint pieces. Beside the workers, peer readers (when the output can seek)
read pieces from the cache and peers only and give back at once what they cannot read: a
worker with an origin range under way is not there to read what the branch already has.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import IO

import aiohttp

from peerdistd.api.client import DEFAULT_READ_MAX, ContentHandle, ReadResult
from peerdistd.api.fetch_pieces import Pieces
from peerdistd.errors import (
    DecodeError,
    MissingData,
    PeerDistError,
    RemoteError,
    ServiceUnavailable,
    Timeout,
    TransferInterrupted,
)
from peerdistd.proto.flight import piece_starts
from peerdistd.proto.pccrc import ContentInformation
from peerdistd.proto.pccrtp import missing_data_headers

UNIT = 1 << 20  # the daemon's piece (peers.piece_size default); reads are aligned to it
ADD_CHUNK = 256 * 1024  # origin bytes per add-data: the claim's progress, block-aligned
# A slow range adds its whole blocks at least this often (seconds), so its claim shows progress
# within the daemons' claim ttl (2 s) even when ADD_CHUNK takes longer to come: ten nodes
# fetching four ranges each shared a 100 Mbit/s WAN at about 2.5 Mbit/s a range, and claims
# were given up and their pieces fetched twice (docs/benchmarks.md, 1 GiB at once).
PROGRESS_EVERY = 0.5
V1_BLOCK = 64 * 1024  # without V2 segment bounds, blocks are V1's ([MS-PCCRC] 2.3)
TIMEOUT_RETRIES = 2  # a TIMEOUT means a claimant is still at it: ask again before the origin
DEFAULT_WORKERS = 4
# A worker reads its next piece while its origin range is still coming, once the rest of that
# range is due within LEAD seconds: on a fast WAN at once (a 1 MiB range takes 0.34 s at
# 100 Mbit/s over four workers), on a slow one near its end, so that the claim the read makes
# waits at most that long for its first progress (a claim without progress for
# peers.claim_ttl_ms, 2 s, is given up and the piece taken over).
LEAD = 0.5
# A range the origin cut short is asked again (its rest only) up to this many times in a row,
# waiting ORIGIN_BACKOFF seconds before the first retry and twice as long before each next.
ORIGIN_RETRIES = 3
ORIGIN_BACKOFF = 0.5
# Peer readers: tasks beside the workers that read pieces from the cache and peers only (the
# ``no_claim`` read flag) and give a piece back at once when nobody fetches it (a worker
# claims it next) or when another node is still fetching it (READER_WAIT): a worker's own
# origin range held it for most of a piece's time on a shared WAN, so five nodes started
# together each wrote about 5 MB/s while the WAN brought 12 and finished 1-2 s after the
# last origin byte (docs/benchmarks.md, "Peer readers").
READER_WAIT_MS = 500
# One: with four, ten nodes at once on two cores (CPU-bound) took 27.5-29.5 s against
# 20.0-22.3 without; one kept that row unchanged (docs/benchmarks.md, "Peer readers").
DEFAULT_READERS = 1
# Answers worth asking again: the origin is busy or failing for now (RFC 9110 15.5.9, 15.6).
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")

Progress = Callable[[int, int | None], None]
"""Called with (bytes written so far, total or None)."""


@dataclass(slots=True)
class FetchCounts:
    from_cache: int = 0
    from_peers: int = 0
    from_origin: int = 0
    origin_requests: int = 0

    @property
    def size(self) -> int:
        return self.from_cache + self.from_peers + self.from_origin


def _plain_reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def origin_range(
    session: aiohttp.ClientSession,
    url: str,
    offset: int,
    length: int,
    chunk: int = 1 << 20,
    *,
    unreachable: Callable[[BaseException], str] = _plain_reason,
    interrupted: Callable[[BaseException], str] = repr,
) -> AsyncIterator[bytes]:
    """The bytes ``[offset, offset+length)`` of ``url``, checked, in chunks of ``chunk``.

    TransferInterrupted for what asking again may cure (a cut body, a reset, 5xx/429);
    ``unreachable``/``interrupted`` word the transport failures (the CLI's are plain)."""
    last = offset + length - 1
    # [MS-PCCRTP] 3.1: an identity request saying MissingDataRequest=true, never together
    # with Accept-Encoding: peerdist (what iPXE sends per block).
    headers = {"Range": f"bytes={offset}-{last}", **missing_data_headers()}
    where = f"origin {url} (bytes {offset}-{last})"
    got = 0
    try:
        async with session.get(url, headers=headers) as resp:
            if resp.status != 206:
                kind = TransferInterrupted if resp.status in _TRANSIENT_STATUS else RemoteError
                raise kind(f"{where}: HTTP {resp.status} {resp.reason}, expected 206")
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if not match or (int(match[1]), int(match[2])) != (offset, last):
                got_range = resp.headers.get("Content-Range")
                raise RemoteError(f"{where}: answered Content-Range {got_range!r}")
            if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
                raise RemoteError(f"{where}: answered Content-Encoding, expected identity")
            while got < length:
                data = await resp.content.read(min(chunk, length - got))
                if not data:
                    break
                got += len(data)
                yield data
            if got != length:
                raise TransferInterrupted(
                    f"{where}: sent a body of the wrong length ({got} of {length} bytes)"
                )
            if await resp.content.read(1):
                raise RemoteError(f"{where}: sent a body of the wrong length (too long)")
    except aiohttp.ClientConnectorError as exc:  # no origin there at all: say so at once
        raise RemoteError(f"{where}: {unreachable(exc)}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        # Reset, cut mid-body, timed out: a second try may well pass.
        raise TransferInterrupted(f"{where}: {interrupted(exc)}") from exc


OriginGet = Callable[[aiohttp.ClientSession, str, int, int, int], AsyncIterator[bytes]]
"""How the loop asks the origin for ``(session, url, offset, length, chunk size)``."""


def pieces_of(content_information: bytes, cap: int = UNIT) -> list[int]:
    """Where the daemons' pieces start in this content (the same cut as theirs), so that
    each worker reads and fetches whole pieces; [] if it does not parse (the daemon says)."""
    try:
        info = ContentInformation.parse(content_information)
    except DecodeError:
        return []
    return piece_starts(info.version, info.segments, cap)


def segments_of(content_information: bytes) -> list[int]:
    """V2: where the segments start (each is one block: data added up to one is verified at
    once, not held); V1: [] (its 64 KiB blocks divide ADD_CHUNK)."""
    try:
        info = ContentInformation.parse(content_information)
    except DecodeError:
        return []
    return [seg.offset for seg in info.segments] if info.version == 2 else []


def _cut(bounds: Sequence[int], pos: int, size: int) -> int:
    """How much of ``size`` bytes at ``pos`` to add: up to the last block start in it."""
    i = bisect.bisect_right(bounds, pos + size) - 1
    return bounds[i] - pos if i >= 0 and bounds[i] > pos else size


def _whole_blocks(bounds: Sequence[int], pos: int, size: int) -> int:
    """How much of ``size`` bytes at ``pos`` ends on a block end (V2: a segment start in
    ``bounds``; else a multiple of V1's 64 KiB): 0 if no block is completed by them."""
    if bounds:
        i = bisect.bisect_right(bounds, pos + size) - 1
        return bounds[i] - pos if i >= 0 and bounds[i] > pos else 0
    end = (pos + size) // V1_BLOCK * V1_BLOCK
    return end - pos if end > pos else 0


def _random_piece(count: int) -> int:
    return random.randrange(count)  # noqa: S311 (spreading work, not a secret)


def _first(count: int) -> int:
    return 0


class _Changes:
    """Wakes the loop's tasks waiting for a range to be given back or finished."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


class _Writer:
    """Writes pieces at their offsets: seeking if ``out`` can, else in order (pieces that
    arrive early wait in memory; workers do not run more than ``ahead`` bytes ahead)."""

    def __init__(self, out: IO[bytes], start: int, ahead: int) -> None:
        self.out, self.start, self.ahead = out, start, ahead
        try:
            self.seekable = out.seekable()
        except (AttributeError, ValueError):
            self.seekable = False
        self.flushed = start  # everything before is written (in-order mode)
        self._early: dict[int, bytes] = {}
        self.room = asyncio.Condition()

    def write(self, offset: int, data: bytes) -> None:
        if self.seekable:
            self.out.seek(offset - self.start)
            self.out.write(data)
            return
        self._early[offset] = data
        while (chunk := self._early.pop(self.flushed, None)) is not None:
            self.out.write(chunk)
            self.flushed += len(chunk)

    async def wait_room(self, offset: int) -> None:
        if self.seekable:
            return
        async with self.room:
            await self.room.wait_for(lambda: offset < self.flushed + self.ahead)

    async def wrote(self) -> None:
        if not self.seekable:
            async with self.room:
                self.room.notify_all()


async def fetch_loop(
    handle: ContentHandle,
    origin: str,
    out: IO[bytes],
    *,
    session: aiohttp.ClientSession,
    origin_get: OriginGet = origin_range,
    workers: int = DEFAULT_WORKERS,
    timeout_ms: int | None = None,
    progress: Progress | None = None,
    read_max: int = DEFAULT_READ_MAX,
    piece_bounds: Sequence[int] = (),
    block_bounds: Sequence[int] = (),
    first_piece: Callable[[int], int] | None = None,
    readers: int | None = None,
) -> FetchCounts:
    """Write the content of ``handle`` (complete content information) to ``out``, reading
    through the daemon and taking what it lacks from ``origin``; ``out`` starts at the range.
    ``piece_bounds``: where the daemons' pieces start (:func:`pieces_of`), else every UNIT;
    ``block_bounds``: where V2 blocks (segments) start, so that added data ends on one;
    ``first_piece(count)``: the index of the piece to start at (:mod:`fetch_pieces`; by
    default a random one when ``out`` can seek, else the first); ``readers``: peer readers
    beside the workers (default DEFAULT_READERS when ``out`` can seek; none when it cannot:
    in order, a range given back would hold up the writer)."""
    if handle.range_offset is None or handle.size is None:
        raise ServiceUnavailable("the content handle has no content information")
    start, end = handle.range_offset, handle.range_offset + handle.size
    counts = FetchCounts()
    writer = _Writer(out, start, ahead=2 * max(1, workers) * UNIT)
    pieces = Pieces(start, end, piece_bounds, UNIT)
    if first_piece is None:
        first_piece = _random_piece if writer.seekable else _first
    if pieces:
        pieces.start_at(first_piece(len(pieces)))
    extend = pieces.extend
    if not writer.seekable:
        readers = 0  # in order, a range given back would hold up all written after it
    elif readers is None:
        readers = DEFAULT_READERS
    reader_wait = READER_WAIT_MS if timeout_ms is None else min(timeout_ms, READER_WAIT_MS)
    changes = _Changes()
    in_hand = 0  # ranges a task is reading

    async def take(*, claim: bool) -> tuple[int, int] | None:
        """The next range for a task (None: all is read); waits while the only ones left
        are being read by others, who may give them back."""
        nonlocal in_hand
        while True:
            changed = changes.event
            unit = pieces.take(claim=claim)
            if unit is not None:
                in_hand += 1
                return unit
            if in_hand == 0 and not pieces.given_back():
                return None
            await changed.wait()

    def finished() -> None:
        nonlocal in_hand
        in_hand -= 1
        changes.notify()

    def report() -> None:
        if progress:
            progress(counts.size, end - start)

    cut_points = sorted(set(block_bounds))

    async def add(pos: int, data: bytes) -> None:
        await handle.add_data(pos, data)
        writer.write(pos, data)
        counts.from_origin += len(data)
        report()

    async def from_origin(
        pos: int, length: int, nearly: asyncio.Event | None = None, lead: float = 0.0
    ) -> None:
        """The range from the origin; a cut is asked again from where it broke off.
        ``nearly`` is set once the rest is due within ``lead`` seconds (and at the end)."""
        try:
            await fetch_range(pos, pos + length, nearly, lead)
        finally:
            if nearly is not None:
                nearly.set()

    async def fetch_range(
        pos: int, end_pos: int, nearly: asyncio.Event | None, lead: float
    ) -> None:
        loop = asyncio.get_running_loop()
        began, first, failures = loop.time(), pos, 0
        for attempt in itertools.count(1):
            counts.origin_requests += 1
            start = pos
            buf = bytearray()  # added about ADD_CHUNK at a time; a cut loses only what is here
            pending: asyncio.Task[None] | None = None  # one add in flight while reading on
            added_at = loop.time()
            try:
                async for chunk in origin_get(session, origin, pos, end_pos - pos, ADD_CHUNK):
                    buf += chunk
                    if nearly is not None and not nearly.is_set():
                        rate = (pos + len(buf) - first) / max(loop.time() - began, 1e-3)
                        if end_pos - pos - len(buf) <= rate * lead:
                            nearly.set()
                    while buf:
                        if len(buf) >= ADD_CHUNK or pos + len(buf) == end_pos:
                            size = _cut(cut_points, pos, len(buf))
                        elif loop.time() - added_at >= PROGRESS_EVERY:
                            size = _whole_blocks(cut_points, pos, len(buf))
                        else:
                            size = 0
                        if not size:
                            break
                        take = bytes(buf[:size])
                        del buf[:size]
                        if pending is not None:
                            await pending
                        pending = asyncio.ensure_future(add(pos, take))
                        pos += size
                        added_at = loop.time()
                if pending is not None:
                    await pending
                break
            except TransferInterrupted as exc:
                if pending is not None:  # what was handed to the daemon stays done
                    await pending
                    pending = None
                # Bounded: ORIGIN_RETRIES in a row without a byte of progress.
                failures = 1 if pos > start else failures + 1
                if failures > ORIGIN_RETRIES:
                    raise TransferInterrupted(
                        f"{exc}; gave up after {attempt} attempts — try again later"
                    ) from exc
                await asyncio.sleep(ORIGIN_BACKOFF * 2 ** (failures - 1))
            finally:
                if pending is not None and not pending.done():  # failing: stop the add
                    pending.cancel()
                    with contextlib.suppress(asyncio.CancelledError, PeerDistError):
                        await pending
        await writer.wrote()

    async def worker() -> None:
        # Each worker has one origin range under way at a time, and reads its next piece
        # as that range nears its end: the read that reports a piece missing (a discovery
        # round, the claim's contention window) took 20-360 ms in which its origin connection
        # carried nothing, and one client alone lost 1.3 s in 128 MiB to it
        # (docs/benchmarks.md). Reading on earlier would make the claim of the next piece
        # wait for the whole range: on a slow WAN longer than the claim's ttl.
        fetching: asyncio.Task[None] | None = None

        async def to_origin(pos: int, length: int) -> None:
            nonlocal fetching
            if fetching is not None:
                await fetching  # raises what the previous range failed with
            nearly = asyncio.Event()
            fetching = asyncio.ensure_future(from_origin(pos, length, nearly, LEAD))
            await nearly.wait()
            if fetching.done():
                await fetching  # raises at once if it failed

        try:
            await read_units(to_origin)
            if fetching is not None:
                await fetching
        finally:
            if fetching is not None:  # failing: stop it (or take its error: never unheard)
                fetching.cancel()
                await asyncio.gather(fetching, return_exceptions=True)

    async def read_units(to_origin: Callable[[int, int], Awaitable[None]]) -> None:
        """Read the pieces this worker takes; hand each range reported missing to
        ``to_origin``, which returns once it is nearly in."""
        while (unit := await take(claim=True)) is not None:
            try:
                await read_unit(unit, to_origin)
            finally:
                finished()

    async def read_unit(
        unit: tuple[int, int], to_origin: Callable[[int, int], Awaitable[None]]
    ) -> None:
        pos, unit_end = unit
        await writer.wait_room(pos)
        timeouts = 0
        while pos < unit_end:
            try:
                read = await handle.block_read(
                    pos, min(read_max, unit_end - pos), timeout_ms=timeout_ms
                )
            except MissingData as gap:
                unit_end = extend(unit_end, gap.offset + gap.length)
                take_len = min(gap.length, unit_end - pos)
                await to_origin(pos, take_len)
                pos += take_len
                continue
            except Timeout as gap:
                timeouts += 1
                if timeouts <= TIMEOUT_RETRIES:
                    continue
                take_len = min(gap.length, unit_end - pos)
                await to_origin(pos, take_len)
                pos += take_len
                continue
            pos += took(pos, unit_end, read)
            await writer.wrote()

    async def reader() -> None:
        """Read what the cache and peers have; give the rest back (see READER_WAIT_MS)."""
        while (unit := await take(claim=False)) is not None:
            pos, unit_end = unit
            try:
                while pos < unit_end:
                    try:
                        read = await handle.block_read(
                            pos,
                            min(read_max, unit_end - pos),
                            timeout_ms=reader_wait,
                            flags=("no_claim",),
                        )
                    except MissingData:  # nobody fetches it: for a worker to claim
                        pieces.give_back(pos, unit_end, free=True)
                        break
                    except Timeout:  # another node is still at it: look again later
                        pieces.give_back(pos, unit_end, free=False)
                        break
                    pos += took(pos, unit_end, read)
            finally:
                finished()

    def took(pos: int, unit_end: int, read: ReadResult) -> int:
        """Write what a read returned; its length."""
        if read.offset != pos or not read.data:
            raise ServiceUnavailable(f"peerdistd block read at {pos} answered badly")
        data = read.data[: unit_end - pos]
        writer.write(pos, data)
        counts.from_peers += min(read.from_peers, len(data))
        counts.from_cache += len(data) - min(read.from_peers, len(data))
        report()
        return len(data)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, workers)):
                group.create_task(worker())
            for _ in range(readers):
                group.create_task(reader())
    except BaseExceptionGroup as failed:  # the first failure, as the caller knows it
        raise failed.exceptions[0] from None
    return counts
