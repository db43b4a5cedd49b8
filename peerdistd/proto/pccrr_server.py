"""Sans-IO MS-PCCRR server: one request body in, one response body out (PROTOCOLS.md 2.5).

The driver passes whether it is busy (active uploads at the limit, [MS-PCCRR] 3.2.5.2-3) and
moves the bytes; every protocol decision is made here.
"""

from __future__ import annotations

import bisect
import functools
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, Protocol, TypeGuard

from peerdistd.errors import DecodeError
from peerdistd.proto import blockcrypto
from peerdistd.proto.pccrr import (
    HEADER_SIZE,
    MAX_BLOCK_RANGES,
    MAX_REQUEST_SIZE,
    MAX_RESPONSE_SIZE,
    RUN_BYTES,
    RUN_LIMIT,
    TRANSPORT_HEADER_SIZE,
    V1_0,
    V2_0,
    Blk,
    BlkList,
    BlockRange,
    CryptoAlgo,
    GetBlkList,
    GetBlks,
    GetSegList,
    MsgType,
    NegoReq,
    NegoResp,
    SegList,
    parse_header,
    parse_request,
    parse_run_request,
    serialize_response,
)

SUPPORTED: Final = (V1_0, V2_0)  # what NEGO_RESP announces (2.2.5.1)

_BLK_HEAD = struct.Struct(">IIIII")  # transport Size, ProtVer, MsgType, MsgSize, CryptoAlgoId
_U32 = struct.Struct(">I")
_U32X2 = struct.Struct(">II")
_U32X3 = struct.Struct(">III")
_AES: Final = (CryptoAlgo.AES_128, CryptoAlgo.AES_192, CryptoAlgo.AES_256)


class BlockSource(Protocol):
    """What the server needs from the block store (met structurally by the cache)."""

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        """Kp of the segment, or None if unknown."""
        ...

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        """Sorted indexes of the blocks held for the segment."""
        ...

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        """The plaintext block, or None if not held."""
        ...


class RunSource(BlockSource, Protocol):
    """A source that reads consecutive blocks at once (one lock, one read: runs go faster)."""

    def read_run(
        self, segment_id: bytes, first: int, count: int
    ) -> tuple[Sequence[bytes | memoryview], int]:
        """The held blocks from ``first`` (at most ``count``, stopping before the first not
        held), and the next held block after them (0 if none)."""
        ...


class Sealed(Protocol):
    """A block kept encrypted as another peer sent it (a hosted cache's unverified copy)."""

    @property
    def crypto(self) -> int: ...

    @property
    def iv(self) -> bytes: ...

    @property
    def block(self) -> bytes: ...


class SealedSource(Protocol):
    """Blocks held only in encrypted form, served as they are (MS-PCHC v2 offers)."""

    def held_blocks(self, segment_id: bytes) -> Sequence[int]: ...

    def get(self, segment_id: bytes, index: int) -> Sealed | None: ...


class ReplyKind(Enum):
    NEGOTIATE = "negotiate"
    BLOCK = "block"
    MISSING = "missing"
    BUSY = "busy"
    BLOCK_LIST = "block-list"
    SEGMENT_LIST = "segment-list"
    DROP = "drop"  # malformed request: answer with an HTTP error, no PCCRR message


@dataclass(frozen=True, slots=True)
class Reply:
    """``body`` is the whole HTTP response body (transport header + message), empty on DROP."""

    kind: ReplyKind
    body: bytes | bytearray = b""
    block_bytes: int = 0  # plaintext bytes of the block carried, for "served to peers"
    reason: str = ""


class RetrievalResponder:
    """Answers PCCRR requests from a :class:`BlockSource`."""

    def __init__(
        self,
        source: BlockSource,
        *,
        allow_plaintext: bool = False,
        iv_factory: Callable[[], bytes] = blockcrypto.new_iv,
        sealed: SealedSource | None = None,
    ) -> None:
        self._source = source
        self._sealed = sealed  # a hosted cache's unverified blocks, after the verified ones
        # DESIGN.md flow 3: knowing a segment id must not be enough to read it, so a request
        # for CryptoAlgoId 0 is answered with AES-128 unless plaintext is explicitly allowed.
        self._allow_plaintext = allow_plaintext
        self._iv_factory = iv_factory
        self._run_source: RunSource | None = source if _reads_runs(source) else None

    def respond(self, request: bytes | bytearray | memoryview, *, busy: bool = False) -> Reply:
        """Answer one request body; never raises on any input."""
        if len(request) > MAX_REQUEST_SIZE:
            return Reply(ReplyKind.DROP, reason=f"request of {len(request)} bytes")
        try:
            header = parse_header(request)
            # 3.2.5.2-3: a major version we do not speak gets NEGO_RESP, whatever the body.
            if not SUPPORTED[0].major <= header.version.major <= SUPPORTED[-1].major:
                return self._negotiate()
            msg = parse_request(request)
        except DecodeError as exc:
            return Reply(ReplyKind.DROP, reason=str(exc))
        match msg:
            case NegoReq():
                return self._negotiate()
            case GetBlks():
                return self._block(msg, busy)
            case GetBlkList():
                return self._block_list(msg, busy)
            case GetSegList():
                return self._segment_list(msg)

    def respond_run(self, request: bytes | bytearray | memoryview, *, busy: bool = False) -> Reply:
        """Answer a body posted to RUN_PATH (pccrr.RUN_PATH): GETBLKS for a range of blocks of
        one segment, or several GETBLKS (one range each, of one segment each) back to back.
        One MSG_BLK per block asked for, in order, back to back: at most RUN_LIMIT of them
        and RUN_BYTES of block data (a prefix of what was asked; the client asks the rest
        again). One message that is not such a GETBLKS is answered as :meth:`respond` would."""
        job = self.run_job(request, busy=busy)
        return self.respond(request, busy=busy) if job is None else job()

    def run_job(
        self, request: bytes | bytearray | memoryview, *, busy: bool = False
    ) -> Callable[[], Reply] | None:
        """The answer to a RUN_PATH request for a run of blocks, as a call that reads, checks
        and encrypts them: thread-safe if the source is (the block cache is; hashlib and the
        ciphers release the GIL), so a driver can make it on a worker thread. A body of one
        message gets None for anything but a run of a segment this source has the secret of
        (busy, malformed, one block, a segment unknown or kept sealed): :meth:`respond`
        answers those at once. A body of several messages always gets a call: the run, the
        busy answer for its first block, NEGO_RESP, or DROP."""
        if len(request) > MAX_REQUEST_SIZE:
            return None
        try:
            msgs = parse_run_request(request)
        except DecodeError:
            return None  # respond() answers one message, or drops the body
        if len(msgs) == 1:
            msg = msgs[0]
            if busy or not isinstance(msg, GetBlks) or len(msg.ranges) != 1:
                return None
            if msg.ranges[0].count < 2 or self._source.segment_secret(msg.segment_id) is None:
                return None  # one block, or perhaps a sealed one: the one-block answer
            return functools.partial(self._run, [msg])
        if any(not SUPPORTED[0].major <= m.version.major <= SUPPORTED[-1].major for m in msgs):
            return self._negotiate  # 3.2.5.2-3, as for one message
        wanted = [m for m in msgs if isinstance(m, GetBlks) and len(m.ranges) == 1]
        if len(wanted) != len(msgs):
            why = "a run of messages other than one-range GETBLKS"
            return functools.partial(Reply, ReplyKind.DROP, reason=why)
        if busy:
            return functools.partial(self._block, wanted[0], True)
        return functools.partial(self._run, wanted)

    def _run(self, wanted: Sequence[GetBlks]) -> Reply:
        """MSG_BLKs for the blocks of ``wanted`` in order, within RUN_LIMIT and RUN_BYTES."""
        frames: list[bytes | bytearray] = []
        served = 0

        def room(size: int) -> bool:
            return len(frames) < RUN_LIMIT and (not frames or served + size <= RUN_BYTES)

        for msg in wanted:
            if len(frames) >= RUN_LIMIT:
                break  # a full answer: the rest of a long body is not looked up at all
            segment_id = msg.segment_id
            first = msg.ranges[0].index
            count = min(msg.ranges[0].count, RUN_LIMIT - len(frames))
            secret = self._source.segment_secret(segment_id)
            if secret is None:  # not held: an empty answer for each, in place
                for index in range(first, first + count):
                    frames.append(serialize_response(_empty_blk(segment_id, index)))
                continue
            blocks: Sequence[bytes | memoryview] = ()
            after = 0
            if self._run_source is not None and count > 0:
                blocks, after = self._run_source.read_run(segment_id, first, count)
            for n, data in enumerate(blocks):  # read and checked in one go; NextBlockIndex
                if not room(len(data)):  # is the next one held
                    return Reply(ReplyKind.BLOCK, b"".join(frames), block_bytes=served)
                next_index = first + n + 1 if n + 1 < len(blocks) else after
                frame, size, _ = self._seal(
                    segment_id, first + n, data, msg.crypto, secret, next_index
                )
                frames.append(frame)
                served += size
            held: Sequence[int] | None = None
            for index in range(first + len(blocks), first + count):  # the rest one by one
                if held is None:
                    held = self._source.held_blocks(segment_id)
                frame, size, _ = self._frame(segment_id, index, msg.crypto, secret, held)
                if not room(size):
                    return Reply(ReplyKind.BLOCK, b"".join(frames), block_bytes=served)
                frames.append(frame)
                served += size
        return Reply(ReplyKind.BLOCK, b"".join(frames), block_bytes=served)

    @staticmethod
    def _negotiate() -> Reply:
        answer = NegoResp(SUPPORTED[0], SUPPORTED[-1])
        return Reply(ReplyKind.NEGOTIATE, serialize_response(answer))

    def _choose_algo(self, requested: int, secret: bytes) -> int | None:
        """The algorithm to answer with (2.2.3: the server may override the request)."""
        if requested == CryptoAlgo.NONE and self._allow_plaintext:
            return CryptoAlgo.NONE
        for algo in (requested, CryptoAlgo.AES_128):
            if algo in _AES and blockcrypto.KEY_SIZES[CryptoAlgo(algo)] <= len(secret):
                return algo
        return None  # a secret too short for any key: nothing we can serve

    def _block(self, msg: GetBlks, busy: bool) -> Reply:
        wanted = [r.index for r in msg.ranges if r.count > 0]
        segment_id = msg.segment_id
        if not wanted:
            # Microsoft's conformance suite sends {index 0, count 0} and expects the "not held"
            # answer (3.2.5.3: SizeOfBlock 0) for the index it named, not a dropped request.
            index = msg.ranges[0].index if msg.ranges else 0
            empty = serialize_response(_empty_blk(segment_id, index))
            return Reply(ReplyKind.MISSING, empty, reason="GETBLKS names no block")
        index = min(wanted)  # 3.2.5.3: several blocks asked for -> the lowest one
        if busy:
            return Reply(ReplyKind.BUSY, serialize_response(_empty_blk(segment_id, index)))
        secret = self._source.segment_secret(segment_id)
        if secret is None and self._sealed is not None:
            return self._sealed_block(self._sealed, segment_id, index)
        if secret is None:
            return Reply(ReplyKind.MISSING, serialize_response(_empty_blk(segment_id, index)))
        frame, size, why = self._frame(segment_id, index, msg.crypto, secret, None)
        if not size:
            return Reply(ReplyKind.MISSING, frame, reason=why)
        return Reply(ReplyKind.BLOCK, frame, block_bytes=size)

    def _frame(
        self,
        segment_id: bytes,
        index: int,
        crypto: int,
        secret: bytes,
        held: Sequence[int] | None,
    ) -> tuple[bytes | bytearray, int, str]:
        """The MSG_BLK response for one block, its plaintext size and why it is empty (size
        0: a block not held or not servable). ``held`` is fetched if not given."""
        data = self._source.read_block(segment_id, index)
        if data is None:
            return serialize_response(_empty_blk(segment_id, index)), 0, ""
        if held is None:
            held = self._source.held_blocks(segment_id)
        after = bisect.bisect_right(held, index)
        next_index = held[after] if after < len(held) else 0
        return self._seal(segment_id, index, data, crypto, secret, next_index)

    def _seal(
        self,
        segment_id: bytes,
        index: int,
        data: bytes | memoryview,
        crypto: int,
        secret: bytes,
        next_index: int,
    ) -> tuple[bytes | bytearray, int, str]:
        """The MSG_BLK response carrying ``data`` encrypted (see :meth:`_frame`)."""
        algo = self._choose_algo(crypto, secret)
        iv = b"" if algo in (None, CryptoAlgo.NONE) else self._iv_factory()
        size = blockcrypto.ciphertext_size(algo or 0, len(data))
        msg_size = _blk_offsets(segment_id, size)[2] + 8 + len(iv) - TRANSPORT_HEADER_SIZE
        if algo is None or msg_size > MAX_RESPONSE_SIZE:
            why = f"cannot serve block of {len(data)} B"
            return serialize_response(_empty_blk(segment_id, index)), 0, why
        frame, hole = _blk_frame(
            segment_id, index, next_index=next_index, size=size, iv=iv, algo=algo
        )
        blockcrypto.encrypt_into(algo, secret, iv, data, memoryview(frame)[hole : hole + size])
        return frame, len(data), ""

    def _sealed_block(self, sealed: SealedSource, segment_id: bytes, index: int) -> Reply:
        """A kept MSG_BLK served as the offerer sent it: we cannot decrypt it (MS-PCHC v2)."""
        found = sealed.get(segment_id, index)
        if found is None:
            return Reply(ReplyKind.MISSING, serialize_response(_empty_blk(segment_id, index)))
        held = sealed.held_blocks(segment_id)
        after = bisect.bisect_right(held, index)
        next_index = held[after] if after < len(held) else 0
        msg = Blk(segment_id, index, next_index, found.block, b"", found.iv, crypto=found.crypto)
        body = serialize_response(msg)
        if len(body) - TRANSPORT_HEADER_SIZE > MAX_RESPONSE_SIZE:
            empty = serialize_response(_empty_blk(segment_id, index))
            return Reply(ReplyKind.MISSING, empty, reason="kept block too big to serve")
        return Reply(ReplyKind.BLOCK, body, block_bytes=len(found.block))

    def _held(self, segment_id: bytes) -> list[int]:
        """Blocks held for the segment: verified ones, else kept encrypted ones."""
        if self._source.segment_secret(segment_id) is not None:
            return sorted(set(self._source.held_blocks(segment_id)))
        if self._sealed is not None:
            return sorted(set(self._sealed.held_blocks(segment_id)))
        return []

    def _block_list(self, msg: GetBlkList, busy: bool) -> Reply:
        if busy:  # 3.2.5.2: busy -> an empty block range list
            return Reply(ReplyKind.BUSY, serialize_response(BlkList(msg.segment_id, ())))
        held = self._held(msg.segment_id)
        ranges, next_index = intersect_ranges(msg.ranges, held)
        answer = BlkList(msg.segment_id, ranges, next_index)
        return Reply(ReplyKind.BLOCK_LIST, serialize_response(answer))

    def _segment_list(self, msg: GetSegList) -> Reply:
        if not msg.segment_ids:  # what Windows does and Microsoft's suite expects: no answer
            return Reply(ReplyKind.DROP, reason="GETSEGLIST names no segment")
        held = [i for i, s in enumerate(msg.segment_ids) if self._held(s)]
        # 2.2.5.4: SegmentRanges index into the request's list of segment ids.
        answer = SegList(msg.request_id, tuple(_runs(held)))
        return Reply(ReplyKind.SEGMENT_LIST, serialize_response(answer))


def intersect_ranges(
    requested: Iterable[BlockRange], held: Sequence[int], limit: int = MAX_BLOCK_RANGES
) -> tuple[tuple[BlockRange, ...], int]:
    """Held blocks inside ``requested`` as normalised ranges, and the NextBlockIndex.

    ``requested`` may be unsorted and overlapping ([MS-PCCRR] Appendix A <4>, <7>); ``held``
    is sorted. At most ``limit`` ranges are listed; NextBlockIndex is the first held block
    after the last one listed (or after the request), 0 if none (2.2.5.2).
    """
    merged = normalise_ranges(requested)
    found: list[int] = []
    for r in merged:
        found.extend(held[bisect.bisect_left(held, r.index) : bisect.bisect_left(held, r.end)])
    ranges = list(_runs(found))
    if len(ranges) > limit:
        ranges = ranges[:limit]
        anchor = ranges[-1].end - 1
    else:
        anchor = merged[-1].end - 1 if merged else -1
    after = bisect.bisect_right(held, anchor)
    return tuple(ranges), held[after] if after < len(held) else 0


def normalise_ranges(ranges: Iterable[BlockRange]) -> list[BlockRange]:
    """Sorted, merged, non-empty ranges (how Windows sends them, Appendix A <4>)."""
    merged: list[BlockRange] = []
    for r in sorted((r for r in ranges if r.count > 0), key=lambda r: r.index):
        if merged and r.index <= merged[-1].end:
            last = merged[-1]
            merged[-1] = BlockRange(last.index, max(last.end, r.end) - last.index)
        else:
            merged.append(r)
    return merged


def _runs(indexes: Iterable[int]) -> Iterable[BlockRange]:
    """Sorted distinct indexes -> consecutive runs."""
    start = prev = -2
    for i in indexes:
        if i != prev + 1:
            if prev >= 0:
                yield BlockRange(start, prev - start + 1)
            start = i
        prev = i
    if prev >= 0:
        yield BlockRange(start, prev - start + 1)


def _reads_runs(source: BlockSource) -> TypeGuard[RunSource]:
    return callable(getattr(source, "read_run", None))


def _empty_blk(segment_id: bytes, index: int) -> Blk:
    return Blk(segment_id, index)


def _blk_offsets(segment_id: bytes, size: int) -> tuple[int, int, int]:
    """End of the segment id, start of the Block field, start of SizeOfVrfBlock (2.2.5.3)."""
    seg_end = TRANSPORT_HEADER_SIZE + HEADER_SIZE + 4 + len(segment_id)
    hole = seg_end + (-seg_end % 4) + 12
    return seg_end, hole, hole + size + (-size % 4)


def _blk_frame(
    segment_id: bytes, index: int, *, next_index: int, size: int, iv: bytes, algo: int
) -> tuple[bytearray, int]:
    """A whole MSG_BLK response body with a ``size``-byte hole for the Block field.

    Returns the buffer and the hole's offset so the block is encrypted straight into it.
    """
    seg_end, hole, tail = _blk_offsets(segment_id, size)
    buf = bytearray(tail + 8 + len(iv))
    msg_size = len(buf) - TRANSPORT_HEADER_SIZE
    _BLK_HEAD.pack_into(buf, 0, msg_size, V1_0.to_wire(), MsgType.BLK, msg_size, algo)
    _U32.pack_into(buf, TRANSPORT_HEADER_SIZE + HEADER_SIZE, len(segment_id))
    buf[seg_end - len(segment_id) : seg_end] = segment_id
    _U32X3.pack_into(buf, hole - 12, index, next_index, size)
    _U32X2.pack_into(buf, tail, 0, len(iv))  # SizeOfVrfBlock 0, then the IV (2.4)
    buf[tail + 8 :] = iv
    return buf, hole
