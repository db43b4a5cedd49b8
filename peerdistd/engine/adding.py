"""ClientAddData: bytes the application got from the origin, verified before they are cached.

Every block (V1) or segment (V2) that the added bytes cover in full is hashed and compared
with its content information ([MS-PCCRC] 2.2, 4.1.2); only matching blocks are cached. Bytes
that cover part of a block, or that no content information describes yet, are held (never
served) until the rest arrives (DESIGN.md, "Read semantics").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from peerdistd import errors
from peerdistd.engine.fetching import staged
from peerdistd.engine.handle import ContentHandle
from peerdistd.engine.ports import BlockStore
from peerdistd.engine.stats import Counters
from peerdistd.engine.view import ContentView
from peerdistd.proto.pccrc import BlockRef


@dataclass(slots=True)
class AddOutcome:
    received: int = 0  # bytes of the body
    verified: int = 0  # bytes verified and cached by this call
    held: int = 0  # bytes the handle holds for later verification, after this call
    bad: list[tuple[int, int]] = field(default_factory=list)  # blocks that failed: [start, end)


ADD_BATCH = 1 << 20  # bytes of an add-data body verified per hand-over to the worker


class DataAdder:
    def __init__(self, store: BlockStore, stats: Counters) -> None:
        self.store = store
        self.stats = stats

    async def add(
        self,
        h: ContentHandle,
        offset: int,
        body: AsyncIterator[bytes],
        staged: Callable[[], None],
    ) -> AddOutcome:
        """Verify and stage a whole body added at ``offset``; ``staged`` after each batch.

        Verification (hashing) and disk writes run on a worker thread, one batch at a time
        and in order, while the next batch of the body is being received.
        """
        out = AddOutcome()
        carry = bytearray()  # a block begun in one batch and finished in the next
        position = offset

        def step(data: bytes, final: bool) -> None:
            nonlocal position
            carry.extend(data)
            done = self.consume(h, position, memoryview(carry), final, out)
            del carry[:done]
            position += done

        async with h.add_lock:  # one add at a time per handle: the held bytes are shared
            batch: list[bytes] = []
            batched = 0
            working: asyncio.Future[None] | None = None
            try:
                async for chunk in body:
                    if h.closed:
                        raise errors.OperationAborted("the content handle was closed")
                    out.received += len(chunk)
                    batch.append(chunk)
                    batched += len(chunk)
                    if batched >= ADD_BATCH:
                        if working is not None:
                            await working
                            staged()
                        working = asyncio.ensure_future(
                            asyncio.to_thread(step, b"".join(batch), False)
                        )
                        batch, batched = [], 0
                if working is not None:
                    await working
                await asyncio.to_thread(step, b"".join(batch), True)
                staged()
            finally:
                if working is not None and not working.done():
                    await asyncio.gather(working, return_exceptions=True)
                if h.closed:  # closed meanwhile: its held bytes leave the daemon's budget
                    h.held.clear()
        out.held = h.held.size
        return out

    def consume(
        self, h: ContentHandle, start: int, buf: memoryview, final: bool, out: AddOutcome
    ) -> int:
        """Verify and cache the blocks ``buf`` (at absolute ``start``) covers; hold the rest.

        Returns how many leading bytes of ``buf`` are dealt with; unless ``final``, a trailing
        partial block is left for the caller to extend with the next chunk of the body.
        """
        view = h.view
        end = start + len(buf)
        pos = start
        good: dict[bytes, list[tuple[BlockRef, bytes | memoryview]]] = {}
        while pos < end:
            ref = view.block_at(pos) if view else None
            if ref is None:
                nxt = _next_described(view, pos)
                # Progress guarantee: every turn of this loop moves ``pos`` forward.
                nxt = end if nxt is None or not pos < nxt < end else nxt
                self._hold(h, pos, buf[pos - start : nxt - start])
                pos = nxt
                continue
            if ref.end > end and not final and ref.start >= start:
                break  # wait for the rest of this block in the next chunk
            if ref.start >= start and ref.end <= end:
                data: bytes | memoryview = buf[ref.start - start : ref.end - start]
            else:
                piece_end = min(ref.end, end)
                self._hold(h, pos, buf[pos - start : piece_end - start])
                assembled = h.held.take(ref.start, ref.end)
                pos = piece_end
                if assembled is None:
                    continue
                h.held.discard(ref.start, ref.end)
                data = assembled
            self._check(view, ref, data, good, out)
            pos = ref.end
        self._store(view, good)
        return pos - start

    def verify_held(self, h: ContentHandle) -> AddOutcome:
        """After more content information arrived: verify what was held and now can be."""
        out = AddOutcome()
        view = h.view
        if view is None or not h.held:
            return out
        good: dict[bytes, list[tuple[BlockRef, bytes | memoryview]]] = {}
        for span_start, span_end in h.held.spans():
            for ref in list(view.blocks_in(span_start, span_end)):
                data = h.held.take(ref.start, ref.end)
                if data is None:
                    continue
                h.held.discard(ref.start, ref.end)
                self._check(view, ref, data, good, out)
        self._store(view, good)
        return out

    def _check(
        self,
        view: ContentView | None,
        ref: BlockRef,
        data: bytes | memoryview,
        good: dict[bytes, list[tuple[BlockRef, bytes | memoryview]]],
        out: AddOutcome,
    ) -> None:
        assert view is not None
        if view.algorithm.digest(data) == ref.hash:
            good.setdefault(ref.segment.segment_id, []).append((ref, data))
            out.verified += len(data)
        else:
            self.stats.invalid_data += 1
            out.bad.append((ref.start, ref.end))

    def _store(
        self,
        view: ContentView | None,
        good: dict[bytes, list[tuple[BlockRef, bytes | memoryview]]],
    ) -> None:
        if good:
            assert view is not None
            self.store.stage([staged(view, blocks) for blocks in good.values()])

    def _hold(self, h: ContentHandle, pos: int, data: memoryview) -> None:
        h.held.add(pos, data)  # raises past this handle's or the daemon's cap


def _next_described(view: ContentView | None, pos: int) -> int | None:
    """The first offset after ``pos`` where a described block may start; None if none."""
    if view is None:
        return None
    for seg in view.segments:
        if seg.offset > pos:
            return seg.offset
        if seg.offset <= pos < seg.offset + seg.length:
            listed_end = seg.block_span(len(seg.block_hashes) - 1)[1] if seg.block_hashes else 0
            if pos >= listed_end:
                return seg.offset + seg.length
    return None
