"""The PeerDist engine: publications, content handles, reads and add-data for every caller.

The API layer calls these methods with the caller's uid (from SO_PEERCRED); everything the
PeerDist API promises about ownership, ordering and verification is decided here.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from peerdistd import errors
from peerdistd.engine.adding import AddOutcome, DataAdder
from peerdistd.engine.commit import GroupCommit
from peerdistd.engine.events import EventBus
from peerdistd.engine.flight import ClaimNetwork, SingleFlight
from peerdistd.engine.handle import ContentHandle
from peerdistd.engine.handle import check_flags as _flags
from peerdistd.engine.handle import loop_running as _loop_running
from peerdistd.engine.handle import may_grow as _may_grow
from peerdistd.engine.handle import ready as _ready
from peerdistd.engine.held import HeldBudget, HeldData
from peerdistd.engine.owners import ALL, SegmentUsers
from peerdistd.engine.ports import BlockStore, NoPeers, PeerNetwork
from peerdistd.engine.publishing import Publisher
from peerdistd.engine.reading import BlockReader, ReadRequest
from peerdistd.engine.slots import SlotPool
from peerdistd.engine.stats import Counters, snapshot
from peerdistd.engine.view import ContentView, ViewCache, view_from_bytes
from peerdistd.proto.flight import PieceId
from peerdistd.proto.pccrc import ContentInformation
from peerdistd.store.publications import PublicationStore

log = logging.getLogger(__name__)

ROOT_UID = 0
MAX_OFFSET = (1 << 64) - 1  # content offsets are 64-bit on the wire ([MS-PCCRC] 2.3, 2.4)
READ_FLAGS = frozenset({"fail_blocked", "shutdown_on_fail", "indicate_peer_accept", "no_claim"})
OPEN_FLAGS = frozenset({"immediate", "whole"})


@dataclass(slots=True)
class EngineSettings:
    enabled: bool = True
    max_inflight: int = 32
    handle_idle_timeout: float = 600.0
    max_handles_per_uid: int = 4096
    held_limit: int = 64 * 1024 * 1024  # unverified bytes one handle may hold
    held_total_limit: int = 256 * 1024 * 1024  # ... and every handle together
    max_read: int = 16 * 1024 * 1024
    piece_size: int = 1 << 20  # single flight's piece cap (peers.piece_size)


@dataclass(frozen=True, slots=True)
class ReadResult:
    offset: int
    data: bytes
    read_id: str
    from_peers: int = 0  # bytes of ``data`` that peers supplied for this read


class Engine:
    """Owns handles and publications; composes the reader, the adder and the publisher."""

    def __init__(
        self,
        store: BlockStore,
        publications: PublicationStore,
        passphrase: bytes,
        *,
        peers: PeerNetwork | None = None,
        settings: EngineSettings | None = None,
        stats: Counters | None = None,
        claims: ClaimNetwork | None = None,
    ) -> None:
        self.store = store
        self.publications = publications
        self.passphrase = passphrase
        self.settings = settings or EngineSettings()
        self.stats = stats or Counters()
        self.events = EventBus(owner=self._owner_of)
        self.peers: PeerNetwork = peers or NoPeers()
        self.slots = SlotPool(self.settings.max_inflight)
        self.held_budget = HeldBudget(self.settings.held_total_limit)
        self._tasks: set[asyncio.Future[Any]] = set()
        self.commits = GroupCommit(store)
        self.reader = BlockReader(
            store, self.peers, self.slots, self.stats, self.events, self._track, self.commits.kick
        )
        self.flight: SingleFlight | None = None
        if claims is not None:
            self.flight = SingleFlight(store, claims, piece_cap=self.settings.piece_size)
            self.reader.flight = self.flight
            claims.on_done(self._piece_done)
        self.adder = DataAdder(store, self.stats)
        self.publisher = Publisher(
            store,
            self.commits,
            publications,
            passphrase,
            self.check_enabled,
            self.check_writable,
        )
        self.handles: dict[str, ContentHandle] = {}
        self.users = SegmentUsers(store.block_counts)
        self._views = ViewCache()
        # Gauges and counters of other parts (the peer network) merged into the snapshot.
        self.extra_stats: list[Callable[[], Mapping[str, float]]] = []
        self._status = "AVAILABLE" if self.settings.enabled else "DISABLED"
        self.unavailable_reason: str | None = None  # why the cache cannot be written

    # -- status --------------------------------------------------------------------------

    @property
    def status(self) -> str:
        return self._status

    def set_status(self, status: str, reason: str | None = None) -> None:
        """UNAVAILABLE takes the ``reason`` the cache cannot be written (shown in status)."""
        self.unavailable_reason = reason if status == "UNAVAILABLE" else None
        if status != self._status:
            self._status = status
            log.info("status changed to %s", status)
            self.events.publish("STATUS_CHANGED", status=status)

    def cache_write_failed(self, reason: str) -> None:
        """A write found the cache's file system full or read-only (the daemon's probe
        sets AVAILABLE again once it can write)."""
        if self._status == "AVAILABLE":
            log.error("status UNAVAILABLE: %s", reason)
            self.set_status("UNAVAILABLE", reason)

    def set_enabled(self, enabled: bool) -> None:
        self.settings.enabled = enabled
        self.set_status("AVAILABLE" if enabled else "DISABLED")

    def check_enabled(self) -> None:
        if not self.settings.enabled:
            raise errors.NotSupported("PeerDist is disabled by policy (daemon.enabled = false)")

    def check_writable(self) -> None:
        """Degraded, not dead: while the cache cannot be written only writes are refused."""
        self.check_enabled()
        if self._status == "UNAVAILABLE":
            reason = self.unavailable_reason or "unknown"
            raise errors.ServiceUnavailable(f"the cache cannot be written right now: {reason}")

    # -- content handles (client side) ---------------------------------------------------

    def open_content(self, uid: int, ci_part: bytes, flags: Iterable[str] = ()) -> ContentHandle:
        self.check_enabled()
        flag_set = _flags(flags, OPEN_FLAGS)
        owned = sum(1 for h in self.handles.values() if h.owner_uid == uid)
        if owned >= self.settings.max_handles_per_uid:
            raise errors.StreamLimitReached(f"uid {uid} has {owned} open handles")
        view = self._views.view(ci_part)
        handle = ContentHandle(
            id=secrets.token_urlsafe(12),
            owner_uid=uid,
            ci_bytes=bytearray(ci_part) if _may_grow(view) else bytearray(),
            view=view,
            stream_offset=view.start,
            held=HeldData(self.settings.held_limit, self.held_budget),
            last_used=time.monotonic(),
            flags=flag_set,
        )
        self.handles[handle.id] = handle
        self.users.note(uid, view.segment_ids(0, ALL))
        if "immediate" in flag_set:
            self.reader.ahead.hint(view, view.start, reading=False)
        self._watch_whole(handle)
        return handle

    def _watch_whole(self, h: ContentHandle) -> None:
        """A handle opened to be read whole (the ``whole`` flag) with complete content
        information: pieces other nodes finish are fetched before it asks (single flight)."""
        if self.flight is not None and "whole" in h.flags and h.view is not None:
            self.flight.watch(h.id, h.view)

    def _piece_done(self, piece: PieceId, endpoint: str) -> None:
        if self.flight is None:
            return
        for view, whole in self.flight.wanted(piece):
            self.reader.fetch_done_piece(view, whole, endpoint)

    def handle(self, uid: int, handle_id: str) -> ContentHandle:
        self.check_enabled()
        h = self.handles.get(handle_id)
        if h is None or (uid not in (h.owner_uid, ROOT_UID)):
            raise errors.InvalidHandle(f"no open content handle {handle_id!r}")
        h.last_used = time.monotonic()
        return h

    async def add_content_information(self, uid: int, handle_id: str, part: bytes) -> ContentHandle:
        h = self.handle(uid, handle_id)
        async with h.add_lock:  # held bytes are verified here: no add may run meanwhile
            return self._add_content_information(h, part)

    def _add_content_information(self, h: ContentHandle, part: bytes) -> ContentHandle:
        if h.view is not None and not _may_grow(h.view):
            raise errors.InvalidParameter("the content information is already complete")
        buf = h.ci_bytes + part
        view = view_from_bytes(bytes(buf))
        if h.view is not None and view.start != h.view.start:
            raise errors.InvalidData("the new part changes the content range")
        h.ci_bytes = buf if _may_grow(view) else bytearray()
        h.view = view
        self.users.note(h.owner_uid, view.segment_ids(0, ALL))
        self.adder.verify_held(h)
        self._watch_whole(h)
        return h

    def complete_content_information(self, uid: int, handle_id: str) -> ContentHandle:
        h = self.handle(uid, handle_id)
        if h.view is None or not h.view.complete:
            try:
                ContentInformation.parse(bytes(h.ci_bytes))
            except errors.DecodeError as exc:
                raise errors.InvalidData(f"content information is incomplete: {exc}") from exc
            raise errors.InvalidData("content information is incomplete")
        return h

    def close(self, uid: int, handle_id: str) -> None:
        self._close(self.handle(uid, handle_id), "closed")

    def _close(self, h: ContentHandle, why: str) -> None:
        if not h.closed:
            log.info("%s", h.summary(why))
        h.closed = True
        self.handles.pop(h.id, None)
        if self.flight is not None:
            self.flight.closed(h.id)
        current = asyncio.current_task() if _loop_running() else None
        for task in list(h.pending):
            if task is not current:
                task.cancel()
        self.reader.drop_ahead(h.id)
        # Held bytes leave the daemon's budget now, or when a running add ends (DataAdder).
        if not h.add_lock.locked():
            h.held.clear()

    async def flush(self, uid: int, handle_id: str) -> int:
        """ClientFlushContent: drop what the handle held unverified and this content's
        cached segments the caller may evict (see :mod:`peerdistd.engine.owners`); returns
        the bytes freed."""
        h = self.handle(uid, handle_id)
        async with h.add_lock:
            h.held.clear()
        freed = 0
        if h.view is not None:
            published = await asyncio.to_thread(self.publications.segment_ids)
            victims = self.users.evictable(uid, h.view, published, self.handles.values())
            freed = await asyncio.to_thread(self.store.drop, victims) if victims else 0
        log.info("flushed the content of handle %s of uid %d: %d bytes freed", h.id, uid, freed)
        return freed

    async def flush_cache(self, include_publications: bool = False) -> dict[str, int]:
        """Root's cache flush: every segment not pinned, publications' kept unless asked."""
        published = await asyncio.to_thread(self.publications.segment_ids)
        keep = frozenset() if include_publications else published
        freed = await asyncio.to_thread(self.store.flush, keep)
        kept = 0 if include_publications else await asyncio.to_thread(self.store.bytes_of, keep)
        log.info("cache flushed: %d bytes freed, %d kept for publications", freed, kept)
        return {"freed": freed, "kept_for_publications": kept}

    def reclaim_idle(self, now: float | None = None) -> int:
        """Close handles idle past ``handle_idle_timeout`` with no read running."""
        now = time.monotonic() if now is None else now
        idle = [
            h
            for h in self.handles.values()
            if not h.active_reads and now - h.last_used > self.settings.handle_idle_timeout
        ]
        for h in idle:
            self._close(h, "reclaimed (idle)")
        return len(idle)

    def reclaim(self, uid: int, handle_id: str) -> None:
        """The caller went away with a read pending: give the handle back."""
        h = self.handles.get(handle_id)
        if h is not None and h.owner_uid == uid:
            self._close(h, "reclaimed (its client went away)")

    # -- reads ---------------------------------------------------------------------------

    def available(self, uid: int, handle_id: str) -> tuple[int, int]:
        h = self.handle(uid, handle_id)
        view = _ready(h)
        return h.stream_offset, self.reader.available(view, h.stream_offset)

    async def stream_read(
        self, uid: int, handle_id: str, max_bytes: int, timeout: float, flags: Iterable[str]
    ) -> ReadResult:
        h = self.handle(uid, handle_id)
        flag_set = _flags(flags, READ_FLAGS)
        return await self._guard(h, self._stream_read(h, max_bytes, timeout, flag_set))

    async def _stream_read(
        self, h: ContentHandle, max_bytes: int, timeout: float, flags: frozenset[str]
    ) -> ReadResult:
        async with h.stream_lock:  # FIFO: each queued read takes the next range
            view = _ready(h)
            offset = h.stream_offset
            try:
                result = await self._read(h, view, offset, max_bytes, timeout, flags)
            except (errors.MissingData, errors.Timeout) as exc:
                h.stream_offset = offset + exc.length
                raise
            h.stream_offset = offset + len(result.data)
            return result

    async def block_read(
        self,
        uid: int,
        handle_id: str,
        offset: int,
        max_bytes: int,
        timeout: float,
        flags: Iterable[str],
    ) -> ReadResult:
        h = self.handle(uid, handle_id)
        flag_set = _flags(flags, READ_FLAGS)
        return await self._guard(h, self._read(h, _ready(h), offset, max_bytes, timeout, flag_set))

    async def _guard(self, h: ContentHandle, coro: Coroutine[Any, Any, ReadResult]) -> ReadResult:
        """Run a read as a task of the handle, so that closing the handle aborts it."""
        task: asyncio.Task[ReadResult] = asyncio.ensure_future(coro)
        h.pending.add(task)
        h.active_reads += 1
        try:
            return await task
        except asyncio.CancelledError:
            if h.closed and task.cancelled():
                self.stats.reads_aborted += 1
                raise errors.OperationAborted("the content handle was closed") from None
            raise
        finally:
            h.pending.discard(task)
            h.active_reads -= 1
            h.last_used = time.monotonic()

    async def _read(
        self,
        h: ContentHandle,
        view: ContentView,
        offset: int,
        max_bytes: int,
        timeout: float,
        flags: frozenset[str],
    ) -> ReadResult:
        if max_bytes <= 0 or max_bytes > self.settings.max_read:
            raise errors.InvalidParameter(f"max must be 1..{self.settings.max_read}")
        if offset >= view.end and not view.complete:
            raise errors.InvalidParameter(
                f"the content information added so far does not reach offset {offset}; "
                "add the rest of it first"
            )
        if offset < view.start or offset >= view.end:
            self.stats.reads_no_more += 1
            raise errors.NoMore(f"offset {offset} is outside the range [{view.start}, {view.end})")
        read_id = secrets.token_hex(8)
        req = ReadRequest(h.id, read_id, offset, max_bytes, timeout, flags)
        status = "OPERATION_ABORTED"
        if self._status == "UNAVAILABLE":  # peer data could not be cached: local only
            req = ReadRequest(h.id, read_id, offset, max_bytes, 0.0, flags)
        try:
            data, from_peers = await self.reader.read(view, req)
            status = "OK"
        except errors.ApiError as exc:
            status = exc.name
            self._count_failure(exc)
            if "shutdown_on_fail" in flags:
                self._close(h, f"closed (shutdown_on_fail: {exc.name})")
            raise
        finally:
            self.events.publish(
                "SHUTDOWN_COMPLETE", uid=h.owner_uid, handle=h.id, read_id=read_id, status=status
            )
        self.stats.reads_ok += 1
        h.tally.read(len(data), from_peers)
        return ReadResult(offset, data, read_id, from_peers)

    def _count_failure(self, exc: errors.ApiError) -> None:
        field = {
            "MISSING_DATA": "reads_missing_data",
            "TIMEOUT": "reads_timeout",
            "NO_MORE": "reads_no_more",
            "STREAM_LIMIT_REACHED": "reads_stream_limit",
            "OPERATION_ABORTED": "reads_aborted",
        }.get(exc.name)
        if field:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    # -- add data ------------------------------------------------------------------------

    async def add_data(
        self, uid: int, handle_id: str, offset: int, body: AsyncIterator[bytes]
    ) -> AddOutcome:
        """ClientAddData: verify the body block by block and cache what matches."""
        h = self.handle(uid, handle_id)
        self.check_writable()
        if not 0 <= offset <= MAX_OFFSET:
            raise errors.InvalidParameter(f"offset must be between 0 and {MAX_OFFSET}")
        failures = self.commits.failures()
        out = await self.adder.add(h, offset, body, self.commits.kick)
        # Durable before acknowledged: the 200 waits for the group commit of its blocks.
        await self.commits.durable(failures)
        self.stats.bytes_from_origin += out.received
        h.tally.from_origin += out.received
        if self.flight is not None and h.view is not None:
            self.flight.added(h.view, offset, offset + out.received)
        if out.bad:
            bad_start, bad_end = out.bad[0]
            raise errors.InvalidData(
                f"{len(out.bad)} block(s) failed verification, the first at "
                f"[{bad_start}, {bad_end}); nothing of them was stored"
            )
        return out

    # -- housekeeping --------------------------------------------------------------------

    def stats_snapshot(self) -> Mapping[str, int]:
        usage = self.store.usage()
        return snapshot(
            self.stats,
            (extra() for extra in self.extra_stats),
            cache_bytes=usage.bytes_used,
            cache_limit_bytes=usage.limit_bytes,
            cache_evictions=usage.evictions,
            bad_blocks_from_disk=usage.bad_blocks_from_disk,
            open_handles=len(self.handles),
            publications=self.publications.count(),
            reads_queued=self.reader.reads_queued,  # waiting for a transfer slot
            fetches_waiting_for_peers=self.reader.fetcher.fetches_waiting,  # their peers were busy
            transfer_slots_in_use=self.slots.in_use,
        )

    def _owner_of(self, handle_id: str) -> int | None:
        h = self.handles.get(handle_id)
        return None if h is None else h.owner_uid

    def _track(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.add(fut)
        fut.add_done_callback(self._tasks.discard)
        fut.add_done_callback(_outcome_taken)

    async def aclose(self) -> None:
        for h in list(self.handles.values()):
            self._close(h, "closed at shutdown")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.commits.aclose()
        self.events.close()


def _outcome_taken(fut: asyncio.Future[Any]) -> None:
    """A background task's failure is taken here, whether or not a read still awaits it.

    A fetch for read-ahead, for a read that timed out or for a DONE piece often ends with no
    one waiting: a peer that did not deliver is an expected outcome (debug), not the asyncio
    "Task exception was never retrieved" ERROR with a traceback that ten nodes at once logged
    hundreds of times. Anything else is a defect and is logged as one."""
    if fut.cancelled():
        return
    exc = fut.exception()
    if exc is None:
        return
    if isinstance(exc, errors.RemoteError | TimeoutError):
        log.debug("background task ended: %s", exc)
    else:
        log.error("background task failed", exc_info=exc)
