"""The seams of the engine: what it needs from the block cache and from the peer network.

The daemon plugs the real :class:`~peerdistd.store.blockcache.BlockCache` and the peer swarm
of ``peerdistd.net`` in here; tests may plug in the same real parts with peers switched off.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from peerdistd.proto.pccrc import BlockRef, HashAlgorithm
from peerdistd.store.blockcache import CacheUsage, VerifyReport
from peerdistd.store.cache_types import StagedSegment
from peerdistd.store.healing import StoreNote


class BlockStore(Protocol):
    """The part of the block cache the engine uses."""

    def stage(self, items: Sequence[StagedSegment]) -> None: ...
    @property
    def staged_bytes(self) -> int: ...
    def commit_staged(self) -> int: ...
    def staging_ticket(self) -> int: ...
    @property
    def committed_batch(self) -> int: ...
    @property
    def commit_failures(self) -> int: ...
    def notes(self) -> list[StoreNote]: ...
    def verify(self, hasher: Callable[[int, bytes], bytes] | None = None) -> VerifyReport: ...
    def has_block(self, segment_id: bytes, index: int, expected: bytes | None = None) -> bool: ...
    def held_blocks(self, segment_id: bytes) -> list[int]: ...
    def matching_blocks(self, segment_id: bytes, hashes: Sequence[bytes]) -> set[int]: ...
    def read_block(
        self,
        segment_id: bytes,
        index: int,
        start: int = 0,
        length: int | None = None,
        *,
        expected: bytes,
    ) -> bytes | None: ...
    def read_run(
        self, segment_id: bytes, first: int, expected: Sequence[bytes], start: int, length: int
    ) -> bytes: ...
    def pin(self, segment_id: bytes) -> AbstractContextManager[None]: ...
    def touch(self, segment_id: bytes) -> None: ...
    def usage(self) -> CacheUsage: ...
    def block_counts(self, segment_ids: Sequence[bytes]) -> dict[bytes, int]: ...
    def bytes_of(self, segment_ids: Collection[bytes]) -> int: ...
    def flush(self, keep: Collection[bytes] = ...) -> int: ...
    def drop(self, segment_ids: Sequence[bytes]) -> int: ...


class PeerNetwork(Protocol):
    """Finding and fetching blocks from peers (``peerdistd.net``)."""

    async def locate(
        self,
        segment_ids: Sequence[bytes],
        *,
        timeout: float,
        probed: Callable[[bool], None] | None = None,
    ) -> Mapping[bytes, int]:
        """Which of ``segment_ids`` some peer holds: id -> most blocks any one peer has.

        ``segment_ids`` are segments of one content in content order; a reader puts the
        content's first segment first, so every window of a content names it and the peers
        that served the content lately can be asked first for the rest. ``probed`` is
        called (with whether any holder answered) when the answer took a discovery round."""
        ...

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        """The block's plaintext, already verified against ``ref.hash`` with ``algorithm``;
        ``None`` if no peer has it. Raises :class:`peerdistd.errors.PeerUnavailable` if the
        timeout ran out while peers were still being tried, and its subclass
        :class:`peerdistd.errors.PeersBusy` if every peer holding it is at its upload limit
        (then :meth:`slot_freed` says when to ask again)."""
        ...

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        """Consecutive blocks of one content (of one segment, or of consecutive segments)
        as :meth:`fetch` gets one: each verified, or None if no peer delivered it (fewer
        exchanges than one fetch per block)."""
        ...

    def prefetch_hint(self, segment_ids: Sequence[bytes]) -> None:
        """Start discovery for these segments now (the ``immediate`` open flag)."""
        ...

    def add_holder(self, segment_ids: Sequence[bytes], endpoint: str) -> None:
        """``endpoint`` (a PCCRR ``ip:port``) holds blocks of these segments: ask it first
        (single flight names the node that fetched a piece)."""
        ...

    def at_limit(self, segment_id: bytes) -> bool:
        """Every peer known to hold the segment is at the upload limit it grants us (its
        busy answers said so): a fetch now would not be served."""
        ...

    async def slot_freed(
        self, segment_id: bytes, *, timeout: float, among: Sequence[str] = ()
    ) -> None:
        """Return once a peer holding the segment may have an upload slot for us again (at
        once if one may now); TimeoutError after ``timeout`` seconds. ``among``: only these
        holders count (those :class:`peerdistd.errors.PeersBusy` named; a holder lacking the
        block may have slots and still cannot serve it)."""
        ...


class NoPeers:
    """The peer network when peers are switched off: nobody ever has anything."""

    async def locate(
        self,
        segment_ids: Sequence[bytes],
        *,
        timeout: float,
        probed: Callable[[bool], None] | None = None,
    ) -> Mapping[bytes, int]:
        return {}

    async def fetch(
        self, ref: BlockRef, algorithm: HashAlgorithm, *, timeout: float
    ) -> bytes | None:
        return None

    async def fetch_run(
        self, refs: Sequence[BlockRef], algorithm: HashAlgorithm, *, timeout: float
    ) -> list[bytes | None]:
        return [None] * len(refs)

    def prefetch_hint(self, segment_ids: Sequence[bytes]) -> None:
        return None

    def add_holder(self, segment_ids: Sequence[bytes], endpoint: str) -> None:
        return None

    def at_limit(self, segment_id: bytes) -> bool:
        return False

    async def slot_freed(
        self, segment_id: bytes, *, timeout: float, among: Sequence[str] = ()
    ) -> None:
        return None
