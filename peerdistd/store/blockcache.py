"""The block cache: verified V1 blocks and V2 segments on disk, served at pread speed.

Layout: ``index.sqlite`` (see :mod:`peerdistd.store.index`) plus one sparse file per segment
(see :mod:`peerdistd.store.cache_files`), block ``i`` at ``i * block_size``. A write is
pwrite, then fdatasync (and fsync of a new file's directory), then the index row in a
transaction whose COMMIT fsyncs the WAL: kill -9 at any point leaves at worst data without a
row (never served, overwritten later), and the syncs before COMMIT keep that true across a
power loss too. Writes acknowledged to clients are staged and group-committed (one fdatasync
per file and one transaction per batch, see cache_staging); a request is answered once the
batch holding its blocks is committed. ``sync=False`` skips the syncs: still safe against
kill -9, but after a power loss a row could outlive its data, so keep it for tests and benches.
Reads look the block up in an in-memory map of the segment (loaded once, at most 512 rows),
pread it and hash it again on every read: a block leaves the cache only if the reader names its
hash and the bytes still hash to it. A block that fails (a flipped bit, a truncated file) is
dropped, counted in ``bad_blocks_from_disk`` and reads as not held. Trust: see
:mod:`peerdistd.store.cache_trust`. Eviction is LRU by segment with a logical clock; touches
are batched into the next write. The store is synchronous: one lock makes it safe from the
event loop and threads.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from peerdistd.errors import (
    InvalidParameter,
    LocalError,
    ServiceUnavailable,
    VerificationError,
)
from peerdistd.store.cache_commit import commit_staged
from peerdistd.store.cache_files import SegmentFiles
from peerdistd.store.cache_heal import HEALING, healing
from peerdistd.store.cache_open import cache_limit, lock_directory, open_index
from peerdistd.store.cache_segments import Seg, SegmentTable
from peerdistd.store.cache_staging import Staging
from peerdistd.store.cache_trust import BadBlocks, proven_list, vouched
from peerdistd.store.cache_types import (
    CacheUsage,
    SegmentRecord,
    StagedSegment,
    VerifyReport,
    block_digest,
    check_block,
    check_record,
    check_segment_id,
)
from peerdistd.store.cache_verify import verify_cache
from peerdistd.store.healing import StoreNote
from peerdistd.store.index import CacheIndex, db_errors

__all__ = ["BlockCache", "CacheUsage", "SegmentRecord", "VerifyReport"]

log = logging.getLogger(__name__)

_TOUCH_BATCH = 1024  # pending LRU touches written in one go


class BlockCache:
    """Verified blocks keyed by (segment id, block index), bounded by an LRU size limit."""

    def __init__(
        self, directory: Path, index: CacheIndex, lock_fd: int, limit: int, sync: bool
    ) -> None:
        self.directory = directory
        self.on_evict: Callable[[bytes], None] | None = None
        # Called (outside the lock) with a segment id when a write makes it complete: a
        # hosted cache client offers it then. It must not block (it only queues).
        self.on_segment_complete: Callable[[bytes], None] | None = None
        self._index = index
        self._files = SegmentFiles(directory)
        self._lock_fd = lock_fd
        self._limit = limit
        self._sync = sync
        self._lock = threading.RLock()
        self._pins: dict[bytes, int] = {}
        self._table = SegmentTable(index, self._files, self._pins)
        self._touched: dict[int, int] = {}
        self._clock = index.max_clock()
        self._closed = False
        # Blocks written (visible to reads), not yet synced nor indexed: see cache_staging.
        self._staging = Staging()
        self._bad = BadBlocks(log)
        self._commit_done = threading.Condition(self._lock)  # a commit finished
        self._commit_failures = 0
        self._notes: list[StoreNote] = []  # heals of a damaged index (store.healing)
        # Calls that stored blocks since open: the background scrub waits while this moves
        # (engine.scrub).
        self.writes = 0

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        limit_bytes: int | None = None,
        limit_percent: float = 5.0,
        sync: bool = True,
    ) -> BlockCache:
        """Open (or create) the cache in ``directory``; a corrupt index starts it empty."""
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise LocalError(f"cannot create cache directory {directory}: {exc}") from exc
        limit = cache_limit(directory, limit_bytes, limit_percent)
        lock_fd = lock_directory(directory)
        try:
            index, note = open_index(directory)
            cache = cls(directory, index, lock_fd, limit, sync)
        except BaseException:
            os.close(lock_fd)
            raise
        cache._notes.extend([note] if note else [])
        cache._tidy()
        return cache

    @healing
    def _tidy(self) -> None:
        with self._lock, db_errors("open"):
            self._empty_trash()
            self._make_room(0, keep=None)

    def notes(self) -> list[StoreNote]:
        """Each time a damaged index was set aside and rebuilt since open (for the status)."""
        with self._lock:
            return list(self._notes)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                commit_staged(self)  # holding the lock throughout: nothing else runs now
            finally:
                self._closed = True
                self._commit_done.notify_all()
            try:
                with db_errors("close"), self._index.transaction():
                    self._flush_touches()
            finally:
                self._table.close()
                self._index.close()
                os.close(self._lock_fd)

    def __enter__(self) -> BlockCache:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- segments -----------------------------------------------------------------------------

    def add_segment(self, record: SegmentRecord, hashes: Sequence[bytes] | None = None) -> None:
        """Record a segment (idempotent); its id must be HMAC(secret, HoD || magic).

        ``hashes``, the segment's full V1 block hash list, proves its blocks if it hashes to
        the HoD: held blocks that contradict it are dropped, later ones must match it. A held
        record that conflicts with ``record`` is replaced unless its own blocks vouch for it
        (see :func:`peerdistd.store.cache_trust.vouched`).
        """
        self.add_segments(((record, hashes),))

    def add_segments(self, items: Iterable[tuple[SegmentRecord, Sequence[bytes] | None]]) -> None:
        """:meth:`add_segment` for several segments, the new ones indexed in one transaction.

        A V2 run of eight segments was eight commits, each a WAL write under the cache's lock
        that every other thread waited on (docs/benchmarks.md, "The cache's lock"). Every
        record is checked before any is added: one that fails adds none.
        """
        with self._lock:
            checked = [item for item in items if not self._loaded_as(*item)]
        if not checked:
            return
        proofs = []
        for record, hashes in checked:
            check_record(record)
            proofs.append((record, proven_list(record, hashes)))
        with self._lock, db_errors("add_segment"):
            self._add_checked(proofs)

    def stage(self, items: Sequence[StagedSegment]) -> None:
        """``add_segment`` and ``put_blocks(durable=False)`` for the segments of one run
        (record, hash list, verified blocks), under one hold of the lock and with one index
        transaction for the new records: thread-safe, as each of those is."""
        completed: list[bytes] = []
        try:
            with self._lock:
                self.add_segments((record, hashes) for record, hashes, _ in items)
                for record, _, blocks in items:
                    check_segment_id(record.segment_id)
                    if self._put_blocks(record.segment_id, blocks, False):
                        completed.append(record.segment_id)
        finally:  # a later segment that fails leaves the earlier ones staged, and said so
            for segment_id in completed:
                self._completed(segment_id)

    def _loaded_as(self, record: SegmentRecord, hashes: Sequence[bytes] | None) -> bool:
        """Whether this very record (and proof) is loaded already, then touched: it was
        checked when it came (the engine adds the segment of every run it stages)."""
        seg = self._table.loaded(record.segment_id)
        if (
            seg is not None
            and seg.record == record
            and (hashes is None or (seg.proven is not None and seg.proven == b"".join(hashes)))
        ):
            self._touch(seg)
            return True
        return False

    def _add_checked(self, proofs: Sequence[tuple[SegmentRecord, bytes | None]]) -> None:
        """Add checked records (under the lock): the ones the index lacks in one transaction,
        then the rest one by one, in order (a repeated id meets the record added before it)."""
        new: dict[bytes, tuple[SegmentRecord, bytes | None]] = {}
        known = []
        for record, proof in proofs:
            if record.segment_id in new or self._table.load(record.segment_id) is not None:
                known.append((record, proof))
            else:
                new[record.segment_id] = (record, proof)
        if new:
            rows = []
            for record, proof in new.values():
                self._clock += 1
                rows.append((record, self._clock, proof))
            with self._index.transaction():
                rowids = self._index.insert_segments(rows)
                self._flush_touches()
            for record, _, proof in rows:
                self._table.add(Seg(rowids[record.segment_id], record, {}, {}, proof))
        for record, proof in known:
            self._add_known(record, proof)

    def _add_known(self, record: SegmentRecord, proof: bytes | None) -> None:
        seg = self._table.load(record.segment_id)
        if seg is not None and seg.record != record:
            if vouched(seg) or record.segment_id in self._pins:
                raise VerificationError("segment record conflicts with the one held")
            log.info("segment %s: replacing a record no data vouched for", seg.rowid)
            self._drop_segments([(seg.rowid, record.segment_id)], evicted=False)
            self._add_checked([(record, proof)])
            return
        if seg is None:
            self._add_checked([(record, proof)])
            return
        if proof is not None and seg.proven is None:
            self._prove(seg, proof)
        self._touch(seg)

    def _prove(self, seg: Seg, proof: bytes) -> None:
        """Adopt a proven hash list: drop the held blocks it contradicts, then record it."""
        seg.proven = proof
        wrong = [
            (i, n) for i, n in seg.lengths.items() if self._held_hash(seg, i) != seg.proven_hash(i)
        ]
        if wrong:
            log.info("segment %s: %d held blocks contradict its proven list", seg.rowid, len(wrong))
            self._drop_blocks(seg, wrong)
        with self._index.transaction():
            self._index.set_proven(seg.rowid, proof)

    def segment(self, segment_id: bytes) -> SegmentRecord | None:
        check_segment_id(segment_id)
        with self._lock, db_errors("segment"):
            seg = self._table.load(segment_id)
            return None if seg is None else seg.record

    # -- writes -------------------------------------------------------------------------------

    def put_block(
        self, segment_id: bytes, index: int, data: bytes | memoryview, block_hash: bytes
    ) -> None:
        """Store one block the caller verified against ``block_hash``."""
        self.put_blocks(segment_id, ((index, data, block_hash),))

    def put_blocks(
        self,
        segment_id: bytes,
        blocks: Iterable[tuple[int, bytes | memoryview, bytes]],
        *,
        durable: bool = True,
    ) -> None:
        """Store verified blocks of one segment: data, one fdatasync, then one commit.

        ``durable=False`` stages them instead: written and readable at once, made durable
        with many others by the next :meth:`commit_staged` (group commit: one fdatasync and
        one transaction for a whole batch). A crash before that loses them, never more: an
        index row only ever exists for synced data. A write that completes the segment
        calls :attr:`on_segment_complete`.
        """
        check_segment_id(segment_id)
        if self._put_blocks(segment_id, blocks, durable):
            self._completed(segment_id)

    def _completed(self, segment_id: bytes) -> None:
        if self.on_segment_complete is not None:
            try:
                self.on_segment_complete(segment_id)
            except Exception:
                log.exception("on_segment_complete callback failed")

    def _put_blocks(
        self,
        segment_id: bytes,
        blocks: Iterable[tuple[int, bytes | memoryview, bytes]],
        durable: bool,
    ) -> bool:
        """:meth:`put_blocks` under the lock; whether this write completed the segment."""
        with self._lock, db_errors("put_blocks"):
            self.writes += 1
            seg = self._table.load(segment_id)
            if seg is None:
                raise LocalError(f"segment {segment_id.hex()} is not in the cache; add it first")
            count = seg.record.block_count
            held_before = len(seg.lengths)
            new: dict[int, tuple[memoryview, bytes]] = {}
            replaced: list[tuple[int, int]] = []
            for index, data, digest in blocks:
                view = memoryview(data).cast("B")
                check_block(seg.record, index, view.nbytes, digest)
                proven = seg.proven_hash(index)
                if proven is not None and digest != proven:
                    raise VerificationError(f"block {index} contradicts the segment's hash list")
                if index in new:
                    if new[index][1] != digest:
                        raise VerificationError(f"block {index} given with two hashes")
                    continue
                staged = self._staging.get(seg.rowid, index)
                if staged is not None and durable and staged[1] == digest:
                    # Durable on return means now, not with that block's batch: it is
                    # written, synced and indexed here, and leaves the batch.
                    self._staging.drop_blocks(seg.rowid, [index])
                    seg.hashes.pop(index, None)
                known = self._held_hash(seg, index)
                if known == digest:
                    continue
                if known is not None:
                    # Held under a hash no full list vouches for (had one, it would equal
                    # ``proven`` and so ``digest``): the caller's verified block wins.
                    replaced.append((index, seg.lengths.get(index, view.nbytes)))
                new[index] = (view, digest)
            if not new:
                self._touch(seg)
                return False
            if replaced:
                log.info("segment %s: replacing %d unproven blocks", seg.rowid, len(replaced))
                self._drop_blocks(seg, replaced)
            self._make_room(sum(v.nbytes for v, _ in new.values()), keep=seg.rowid)
            fd, created = self._table.create_fd(seg)
            self._files.write_blocks(
                fd, seg.record.block_size, [(i, v) for i, (v, _) in new.items()]
            )
            if not durable:
                new_rows = [(i, v.nbytes, d) for i, (v, d) in new.items()]
                self._staging.add(seg.rowid, new_rows, created=created)
                seg.lengths.update((i, v.nbytes) for i, (v, _) in new.items())
                seg.hashes.update((i, d) for i, (_, d) in new.items())
                if held_before:
                    # A segment that held nothing frees nothing, so no eviction picks it
                    # before its commit dates it (insert_blocks sets last_used): a touch
                    # here was one more UPDATE per new V2 segment.
                    self._touch(seg)
                return held_before < count <= len(seg.lengths)
            if self._sync:
                self._files.sync(fd)  # data durable before the row that vouches for it
                if created:
                    self._files.sync_dirs([seg.rowid])
            self._clock += 1
            rows = [(index, view.nbytes, digest) for index, (view, digest) in new.items()]
            with self._index.transaction(durable=self._sync):
                self._index.insert_blocks(seg.rowid, rows, self._clock)
                self._touched.pop(seg.rowid, None)
                self._flush_touches()
            seg.lengths.update((index, length) for index, length, _ in rows)
            seg.hashes.update((index, digest) for index, _, digest in rows)
            return held_before < count <= len(seg.lengths)

    @property
    def staged_bytes(self) -> int:
        """Bytes written by ``put_blocks(durable=False)`` not committed yet."""
        return self._staging.bytes

    def staging_ticket(self) -> int:
        """The commit batch that makes every block staged so far durable (see
        :attr:`committed_batch`); take it after the ``put_blocks`` calls it must cover."""
        with self._lock:
            return self._staging.ticket()

    @property
    def committed_batch(self) -> int:
        """Every batch up to this one is synced and indexed (or counted in commit_failures)."""
        return self._staging.committed

    @property
    def commit_failures(self) -> int:
        """Commits that failed (their blocks were forgotten, never indexed) since open."""
        return self._commit_failures

    def commit_staged(self) -> int:
        """Make every block staged before the call durable and indexed; returns the bytes.

        One commit at a time (a second caller waits for the first, then commits what was
        staged meanwhile): batches are indexed in order, each only after its own data was
        synced, and the sync runs without the cache's lock (see cache_commit). A failure
        forgets the batch's blocks, counts it in :attr:`commit_failures` and raises.
        """
        return commit_staged(self)

    # -- reads --------------------------------------------------------------------------------

    def has_block(self, segment_id: bytes, index: int, expected: bytes | None = None) -> bool:
        """Whether the block is held (under the hash ``expected``, if given)."""
        check_segment_id(segment_id)
        with self._lock, db_errors("has_block"):
            seg = self._table.load(segment_id)
            if seg is None or index not in seg.lengths:
                return False
            return expected is None or self._held_hash(seg, index) == expected

    def held_blocks(self, segment_id: bytes) -> list[int]:
        check_segment_id(segment_id)
        with self._lock, db_errors("held_blocks"):
            seg = self._table.load(segment_id)
            return [] if seg is None else sorted(seg.lengths)

    def block_hashes(self, segment_id: bytes) -> dict[int, bytes]:
        """Index -> hash of every held block of a segment (staged ones too), as verified when
        each was stored: what a V1 offer of the segment names ([MS-PCHC] 2.2.1.3)."""
        check_segment_id(segment_id)
        with self._lock, db_errors("block_hashes"):
            seg = self._table.load(segment_id)
            if seg is None:
                return {}
            held = ((i, self._held_hash(seg, i)) for i in list(seg.lengths))
            return {i: digest for i, digest in held if digest is not None}

    def matching_blocks(self, segment_id: bytes, hashes: Sequence[bytes]) -> set[int]:
        """The held blocks whose hash is the one ``hashes`` (a reader's list) names."""
        check_segment_id(segment_id)
        with self._lock, db_errors("matching_blocks"):
            seg = self._table.load(segment_id)
            if seg is None:
                return set()
            return {
                i for i in seg.lengths if i < len(hashes) and self._held_hash(seg, i) == hashes[i]
            }

    def proven_blocks(self, segment_id: bytes) -> list[int]:
        """The held blocks a proof vouches for: the only ones served to peers."""
        check_segment_id(segment_id)
        with self._lock, db_errors("proven_blocks"):
            seg = self._table.load(segment_id)
            if seg is None:
                return []
            return sorted(
                i
                for i in seg.lengths
                if (want := seg.proven_hash(i)) is not None and self._held_hash(seg, i) == want
            )

    def block_counts(
        self, segment_ids: Sequence[bytes], *, proven_only: bool = False
    ) -> dict[bytes, int]:
        """Held block count of each held segment among ``segment_ids`` (staged ones too);
        ``proven_only`` counts only what peers may be served (:meth:`proven_blocks`)."""
        for segment_id in segment_ids:
            check_segment_id(segment_id)
        # Most ids a probe asks about are not here (ten nodes reading one V2 content ask
        # about ~1,000 segments each): those cost a dict lookup, without the lock (which a
        # thread staging blocks may hold) and without SQL (cache_held).
        index = self._index
        present = [s for s in dict.fromkeys(segment_ids) if index.has_segment(s)]
        if not present:
            return {}
        with self._lock, db_errors("block_counts"):
            counts = self._index.counts(present, proven_only=proven_only)
            for segment_id in present:
                seg = self._table.loaded(segment_id)
                if seg is not None and proven_only and seg.proven_hash(0) is None:
                    continue
                staged = self._staging.count(seg.rowid) if seg is not None else 0
                if staged:
                    counts[segment_id] = counts.get(segment_id, 0) + staged
            return counts

    def read_block(
        self,
        segment_id: bytes,
        index: int,
        start: int = 0,
        length: int | None = None,
        *,
        expected: bytes | None = None,
    ) -> bytes | None:
        """Bytes ``[start, start+length)`` of the block if it is held under the hash
        ``expected`` and its bytes still hash to it (checked on every read); else None.

        Readers name the hash their content information gives (``None``, for maintenance and
        tests, takes the stored one). A block whose bytes fail is dropped and counted
        (``bad_blocks_from_disk``).
        """
        check_segment_id(segment_id)
        with self._lock:  # the hot path: dict lookups and one pread, no SQL
            seg = self._table.get(segment_id)
            if seg is None or (size := seg.lengths.get(index)) is None:
                return None
            if not 0 <= start <= size or (length is not None and length < 0):
                raise InvalidParameter(f"range start {start} length {length} outside the block")
            with db_errors("read_block"):
                held = self._held_hash(seg, index)
            if held is None or (expected is not None and held != expected):
                return None  # held, but not the block this reader's content information names
            fd = seg.fd if seg.fd is not None else self._table.fd(seg)
            offset = index * seg.record.block_size
            data = b"" if fd is None else SegmentFiles.read(fd, offset, size)
            if len(data) != size:  # truncated under us: never serve a short block
                with db_errors("read_block"):
                    self._drop_truncated(seg)
                return None
            self._touch(seg)
            algorithm = seg.record.algorithm
        # Hashed outside the lock: hashlib releases the GIL, other readers go on meanwhile.
        if block_digest(algorithm, data) != held:
            self._drop_bad(segment_id, index, held)
            return None
        if start == 0 and (length is None or length >= size):
            return data
        return data[start : size if length is None else start + length]

    def read_run(
        self, segment_id: bytes, first: int, expected: Sequence[bytes], start: int, length: int
    ) -> bytes:
        """Up to ``length`` bytes from ``start`` in block ``first``, over the consecutive
        blocks ``first``, ``first + 1``... whose hashes ``expected`` names: :meth:`read_block`
        for a run of blocks, one pread and one buffer for all. It stops before the first block
        not held under its hash or whose bytes fail it (that one is dropped and counted)."""
        check_segment_id(segment_id)
        sizes: list[int] = []
        total = 0
        with self._lock:
            seg = self._table.get(segment_id)
            if seg is None:
                return b""
            with db_errors("read_run"):
                for i, want in enumerate(expected):
                    size = seg.lengths.get(first + i)
                    if size is None or self._held_hash(seg, first + i) != want:
                        break
                    sizes.append(size)
                    total += size
                    if size < seg.record.block_size or start + length <= total:
                        break
            if not sizes:
                return b""
            if not 0 <= start < sizes[0] or length < 0:
                raise InvalidParameter(f"range start {start} length {length} outside the block")
            fd = seg.fd if seg.fd is not None else self._table.fd(seg)
            block_size = seg.record.block_size
            data = b"" if fd is None else SegmentFiles.read(fd, first * block_size, total)
            if len(data) != total:  # truncated under us: never serve a short block
                with db_errors("read_run"):
                    self._drop_truncated(seg)
                return b""
            self._touch(seg)
            algorithm = seg.record.algorithm
        good = 0
        with memoryview(data) as view:  # hashed outside the lock, as in read_block
            for i, size in enumerate(sizes):
                at = i * block_size
                if block_digest(algorithm, view[at : at + size]) != expected[i]:
                    self._drop_bad(segment_id, first + i, expected[i])
                    break
                good = at + size
        end = min(good, start + length)
        if start == 0 and end == len(data):
            return data
        return data[start:end] if end > start else b""

    def read_proven(self, segment_id: bytes, index: int) -> bytes | None:
        """The whole block if a proof vouches for its hash (checked on this read): for peers,
        who cannot know which content information the block was cached under."""
        check_segment_id(segment_id)
        with self._lock:
            seg = self._table.get(segment_id)
            want = None if seg is None else seg.proven_hash(index)
            if want is None:
                return None
            return self.read_block(segment_id, index, expected=want)

    def read_proven_run(
        self, segment_id: bytes, first: int, count: int
    ) -> tuple[list[memoryview], int]:
        """:meth:`read_proven` for up to ``count`` consecutive blocks from ``first`` in one
        pread: the blocks up to the first one not held under its proven hash or whose bytes
        fail it, each checked on this read; and the next block after them that is held under
        its proven hash (0 if none), a run answer's last NextBlockIndex ([MS-PCCRR] 2.2.4.3)."""
        check_segment_id(segment_id)
        with self._lock:
            seg = self._table.get(segment_id)
            if seg is None:
                return [], 0
            expected: list[bytes] = []
            for index in range(first, first + count):
                want = seg.proven_hash(index)
                if want is None:
                    break
                expected.append(want)
            block_size = seg.record.block_size
        if not expected:
            return [], 0
        data = memoryview(self.read_run(segment_id, first, expected, 0, len(expected) * block_size))
        blocks = [data[at : at + block_size] for at in range(0, len(data), block_size)]
        after = first + len(blocks)
        with self._lock, db_errors("read_proven_run"):
            seg = self._table.get(segment_id)
            if seg is None:
                return blocks, 0
            proven = (
                i
                for i in sorted(i for i in seg.lengths if i >= after)
                if (want := seg.proven_hash(i)) is not None and self._held_hash(seg, i) == want
            )
            if after in seg.lengths and (want := seg.proven_hash(after)) is not None:
                return blocks, after if self._held_hash(seg, after) == want else next(proven, 0)
            return blocks, next(proven, 0)

    def _held_hash(self, seg: Seg, index: int) -> bytes | None:
        """The hash block ``index`` is held under (written: staged or indexed), or None."""
        if index not in seg.lengths:  # never held, or dropped (failed commit, verify...)
            seg.hashes.pop(index, None)
            staged = self._staging.get(seg.rowid, index)  # staged before a reload
            return None if staged is None else staged[1]
        known = seg.hashes.get(index)
        if known is None:
            staged = self._staging.get(seg.rowid, index)
            known = staged[1] if staged is not None else self._index.block_hash(seg.rowid, index)
            if known is not None:
                seg.hashes[index] = known
        return known

    def _drop_bad(self, segment_id: bytes, index: int, digest: bytes) -> None:
        """Bytes on disk that no longer hash to their row: drop the block, count, log once."""
        with self._lock, db_errors("read_block"):
            seg = self._table.get(segment_id)
            if seg is None or seg.hashes.get(index) != digest or index not in seg.lengths:
                return  # replaced or dropped meanwhile
            self._drop_blocks(seg, [(index, seg.lengths[index])])
            self._bad.found(self._files.path(seg.rowid), index)

    # -- LRU, pins, limits --------------------------------------------------------------------

    @contextmanager
    def pin(self, segment_id: bytes) -> Iterator[None]:
        """Keep the segment (and its descriptor) from eviction while the block is used."""
        check_segment_id(segment_id)
        with self._lock:
            self._pins[segment_id] = self._pins.get(segment_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._pins.pop(segment_id) - 1
                if left:
                    self._pins[segment_id] = left

    def touch(self, segment_id: bytes) -> None:
        check_segment_id(segment_id)
        with self._lock, db_errors("touch"):
            seg = self._table.load(segment_id)
            if seg is not None:
                self._touch(seg)

    def usage(self) -> CacheUsage:
        with self._lock, db_errors("usage"):
            t = self._index.totals()
            staged_blocks = self._staging.blocks()
            return CacheUsage(
                t.bytes + self._staging.bytes,
                self._limit,
                t.segments,
                t.blocks + staged_blocks,
                t.evictions,
                self._bad.count,
            )

    def flush(self, keep: Collection[bytes] = frozenset()) -> int:
        """Drop every segment that is not pinned nor in ``keep``; returns the bytes freed."""
        with self._lock, db_errors("flush"):
            with self._index.transaction():
                self._flush_touches()
            victims = [
                (r, s) for r, s, _ in self._index.lru() if s not in self._pins and s not in keep
            ]
            return self._drop_segments(victims, evicted=False)

    def bytes_of(self, segment_ids: Collection[bytes]) -> int:
        """Bytes the cache holds (indexed) of these segments."""
        if not segment_ids:
            return 0
        with self._lock, db_errors("bytes_of"):
            return sum(size for _, s, size in self._index.lru() if s in segment_ids)

    def drop(self, segment_ids: Sequence[bytes]) -> int:
        """Remove these segments (those not pinned) from the cache; returns the bytes freed."""
        for segment_id in segment_ids:
            check_segment_id(segment_id)
        with self._lock, db_errors("drop"):
            victims = []
            for segment_id in dict.fromkeys(segment_ids):
                seg = self._table.load(segment_id)
                if seg is not None and segment_id not in self._pins:
                    victims.append((seg.rowid, segment_id))
            return self._drop_segments(victims, evicted=False) if victims else 0

    def verify(self, hasher: Callable[[int, bytes], bytes] | None = None) -> VerifyReport:
        """Re-hash every held block, drop those that fail, remove stray files."""
        return verify_cache(self, hasher or block_digest)

    # -- internals (also used by cache_verify) --------------------------------------------------

    def _touch(self, seg: Seg) -> None:
        self._clock += 1
        self._touched[seg.rowid] = self._clock
        if len(self._touched) >= _TOUCH_BATCH:
            try:
                with db_errors("touch"), self._index.transaction():
                    self._flush_touches()
            except LocalError as exc:
                # LRU order is only a hint: a cache whose disk is full or read-only still
                # serves reads; the touches are lost, not piled up.
                log.warning("cannot record cache use (%s); reads go on", exc)
                self._touched.clear()

    def _flush_touches(self) -> None:
        if self._touched:
            self._index.touch(self._touched.items())
            self._touched.clear()

    def _drop_truncated(self, seg: Seg) -> None:
        """Forget the blocks the segment file no longer holds in full."""
        fd = self._table.fd(seg)
        size = -1 if fd is None else os.fstat(fd).st_size
        gone = [(i, n) for i, n in seg.lengths.items() if i * seg.record.block_size + n > size]
        log.warning("segment file %s lost %d blocks", self._files.path(seg.rowid), len(gone))
        self._drop_blocks(seg, gone)

    def _drop_blocks(self, seg: Seg, gone: list[tuple[int, int]]) -> None:
        unindexed = self._staging.drop_blocks(seg.rowid, [i for i, _ in gone])
        indexed = [(i, n) for i, n in gone if i not in unindexed]
        for i, _ in gone:
            seg.lengths.pop(i, None)
            seg.hashes.pop(i, None)
        if indexed:
            with self._index.transaction():
                self._index.delete_blocks(seg.rowid, indexed)

    def set_limit(self, *, limit_bytes: int | None = None, limit_percent: float = 5.0) -> int:
        """Change the size limit at run time (SIGHUP) and evict down to it; returns it.

        If pinned segments keep the cache above the new limit, the rest is evicted and the
        pinned ones go when they are unpinned and more room is needed.
        """
        limit = cache_limit(self.directory, limit_bytes, limit_percent)
        with self._lock, db_errors("set_limit"):
            self._limit = limit
            with contextlib.suppress(ServiceUnavailable):
                self._make_room(0, keep=None)
        return limit

    def _make_room(self, needed: int, *, keep: int | None) -> None:
        excess = self._index.totals().bytes + self._staging.bytes + needed - self._limit
        if excess <= 0:
            return
        with self._index.transaction():
            self._flush_touches()
        victims: list[tuple[int, bytes]] = []
        for rowid, segment_id, size in self._index.lru():
            # Empty segments free nothing: keep the records the engine is about to fill.
            if size and rowid != keep and segment_id not in self._pins:
                victims.append((rowid, segment_id))
                excess -= size
                if excess <= 0:
                    break
        if excess > 0:
            raise ServiceUnavailable("block cache full: the rest is pinned or being written")
        self._drop_segments(victims, evicted=True)

    def _drop_segments(self, victims: list[tuple[int, bytes]], *, evicted: bool) -> int:
        with self._index.transaction():
            freed = self._index.delete_segments([r for r, _ in victims], evicted=evicted)
        for rowid, segment_id in victims:
            self._table.forget(segment_id)
            self._touched.pop(rowid, None)
            self._staging.drop_segment(rowid)
        self._empty_trash()
        if self.on_evict is not None:
            for _, segment_id in victims:
                try:
                    self.on_evict(segment_id)
                except Exception:
                    log.exception("on_evict callback failed")
        return freed

    def _empty_trash(self) -> None:
        trash = self._index.trash()
        for rowid in trash:
            self._files.remove(rowid)
        if trash:
            with self._index.transaction():
                self._index.clear_trash(trash)


# A damaged index met at run time is rebuilt and the call retried (see cache_heal).
for _name in HEALING:
    setattr(BlockCache, _name, healing(getattr(BlockCache, _name)))
