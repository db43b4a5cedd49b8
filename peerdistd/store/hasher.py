"""Hash files and streams into content information (PROTOCOLS.md 1.2-1.4).

Memory stays independent of the content size: files are read in windows and V1 segments
are hashed in parallel threads (hashlib releases the GIL on large buffers, and so do
``os.preadv`` and the FastCDC cut). A V2 file is cut in order on the calling thread while
workers hash the settled segments.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from peerdistd.errors import InvalidParameter, LocalError
from peerdistd.proto import chunking
from peerdistd.proto.pccrc import (
    V1_BLOCK_SIZE,
    V1_SEGMENT_SIZE,
    ContentInformation,
    HashAlgorithm,
    Segment,
    build_v1,
    build_v2,
    segment_v1,
    segment_v2_from_hod,
)

READ_SIZE = 16 * V1_BLOCK_SIZE  # one read: 1 MiB, a whole number of V1 blocks
V2_WINDOW = 4 * 1024 * 1024  # bytes cut per step of a V2 file
_TRUNC = HashAlgorithm.TRUNCATED_SHA512


@dataclass(frozen=True, slots=True)
class HashedSegment:
    """A segment just hashed and its bytes, for the block cache."""

    segment: Segment
    data: bytes | bytearray


def check_algorithm(version: int, algorithm: HashAlgorithm) -> HashAlgorithm:
    """The algorithm to use: V2 always truncated SHA-512 (1.4); V1 one of the SHA-2s (1.3)."""
    if version == 2 and algorithm in (HashAlgorithm.SHA256, _TRUNC):
        return _TRUNC
    if version == 1 and algorithm.version == 1:
        return algorithm
    raise InvalidParameter(f"content information version {version} cannot use {algorithm.label}")


def hash_file(
    path: str | os.PathLike[str],
    *,
    version: int = 1,
    algorithm: HashAlgorithm = HashAlgorithm.SHA256,
    ks: bytes,
    offset: int | None = None,
    length: int | None = None,
    workers: int | None = None,
) -> ContentInformation:
    """Content information for the file, or for its range [offset, offset + length).

    Version 2 always uses truncated SHA-512 (leave ``algorithm`` at its default).
    """
    algorithm = check_algorithm(version, algorithm)
    workers = max(1, workers or os.cpu_count() or 1)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        size = os.fstat(fd).st_size
        start = offset or 0
        end = size if length is None else start + length
        if size == 0 and start == end == 0:
            return build_v1(algorithm, (), 0, 0) if version == 1 else build_v2((), 0, 0)
        if not 0 <= start < end <= size:
            raise InvalidParameter(f"range {start}-{end} is not inside the {size}-byte file")
        reader = _Reader(fd, Path(path), size)
        with ThreadPoolExecutor(workers, thread_name_prefix="peerdist-hash") as pool:
            if version == 1:
                segments = _file_v1(reader, pool, algorithm, ks, start=start, end=end)
                return build_v1(algorithm, segments, start, end)
            segments = _file_v2(reader, pool, workers, ks, start=start, end=end)
            return build_v2(segments, start, end)
    except OSError as exc:
        raise LocalError(f"cannot read {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class _Reader:
    fd: int
    path: Path
    size: int

    def read_into(self, buf: memoryview, pos: int) -> None:
        """Fill ``buf`` from file offset ``pos``; the file must not have shrunk."""
        done = 0
        while done < len(buf):
            n = os.preadv(self.fd, [buf[done:]], pos + done)
            if n == 0:
                raise LocalError(f"{self.path} shrank while it was being hashed")
            done += n


def _file_v1(
    reader: _Reader,
    pool: ThreadPoolExecutor,
    algorithm: HashAlgorithm,
    ks: bytes,
    *,
    start: int,
    end: int,
) -> list[Segment]:
    # HoD covers every block of a segment, so whole segments are hashed even for a range.
    def one(index: int) -> Segment:
        seg_offset = index * V1_SEGMENT_SIZE
        seg_length = min(V1_SEGMENT_SIZE, reader.size - seg_offset)
        buf = memoryview(bytearray(READ_SIZE))
        hashes = []
        for pos in range(seg_offset, seg_offset + seg_length, READ_SIZE):
            view = buf[: min(READ_SIZE, seg_offset + seg_length - pos)]
            reader.read_into(view, pos)
            hashes += [
                algorithm.digest(view[i : i + V1_BLOCK_SIZE])
                for i in range(0, len(view), V1_BLOCK_SIZE)
            ]
        return segment_v1(algorithm, index, seg_offset, seg_length, hashes, ks)

    return list(pool.map(one, range(start // V1_SEGMENT_SIZE, (end - 1) // V1_SEGMENT_SIZE + 1)))


_Cut = tuple[int, int, int, int]  # segment index, content offset, offset in window, length


def _hash_cuts(window: memoryview, cuts: list[_Cut], ks: bytes) -> list[Segment]:
    return [
        segment_v2_from_hod(index, offset, length, _TRUNC.digest(window[at : at + length]), ks)
        for index, offset, at, length in cuts
    ]


def _file_v2(
    reader: _Reader, pool: ThreadPoolExecutor, workers: int, ks: bytes, *, start: int, end: int
) -> list[Segment]:
    # Cuts depend on every byte before them, so a range is cut from the start of the file
    # (cheap) and only the segments that meet the range are hashed. Window buffers are
    # reused once their batch is hashed: fresh ones would cost a page fault per 4 KiB.
    segments: list[Segment] = []
    pending: deque[tuple[Future[list[Segment]], bytearray]] = deque()
    free: list[bytearray] = []
    carry = b""  # the unsettled tail of the last window (< MAX_SEGMENT bytes)
    pos = index = 0  # file offset of carry[0]; index of the next segment
    while pos < end:
        buf = free.pop() if free else bytearray(V2_WINDOW + chunking.MAX_SEGMENT)
        read_at = pos + len(carry)
        take = min(V2_WINDOW, reader.size - read_at)
        window = memoryview(buf)[: len(carry) + take]
        window[: len(carry)] = carry
        reader.read_into(window[len(carry) :], read_at)
        cuts = []
        at = 0
        for length in chunking.cut(window, final=read_at + take == reader.size):
            if pos + at < end and pos + at + length > start:
                cuts.append((index, pos + at, at, length))
            index += 1
            at += length
        carry = bytes(window[at:])
        pos += at
        if cuts:
            pending.append((pool.submit(_hash_cuts, window, cuts, ks), buf))
        else:
            free.append(buf)
        while len(pending) > 2 * workers or (pending and pos >= end):
            done, buf = pending.popleft()
            segments += done.result()
            free.append(buf)
    return segments


class StreamHasher:
    """Hash content that arrives in pieces; segments come out as soon as they are settled."""

    def __init__(self, *, version: int, algorithm: HashAlgorithm, ks: bytes) -> None:
        self.version = version
        self.algorithm = check_algorithm(version, algorithm)
        self._ks = ks
        self._buf = bytearray()  # V1: the current segment; V2: bytes not yet cut
        self._hashes: list[bytes] = []  # V1: hashes of the complete blocks in _buf
        self._offset = 0  # content offset of _buf[0]
        self._segments: list[Segment] = []
        self._finished = False

    @property
    def size(self) -> int:
        """Bytes fed so far."""
        return self._offset + len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[HashedSegment]:
        """Add the next bytes; returns the segments they completed."""
        if self._finished:
            raise InvalidParameter("feed() after finish()")
        if self.version == 1:
            return self._feed_v1(memoryview(data).cast("B"))
        self._buf += data
        if len(self._buf) < 2 * chunking.MAX_SEGMENT + V2_WINDOW:
            return []
        return self._cut_v2(final=False)

    def finish(self) -> list[HashedSegment]:
        """The end of the content: returns the last segments."""
        if self._finished:
            return []
        self._finished = True
        if self.version == 2:
            return self._cut_v2(final=True)
        return [self._emit_v1()] if self._buf else []

    def content_information(self) -> ContentInformation:
        """Content information of everything fed (after :meth:`finish`)."""
        if not self._finished:
            raise InvalidParameter("content_information() before finish()")
        build = build_v1 if self.version == 1 else _build_v2
        return build(self.algorithm, self._segments, 0, self._offset)

    def _feed_v1(self, data: memoryview) -> list[HashedSegment]:
        out = []
        while data:
            room = V1_SEGMENT_SIZE - len(self._buf)
            self._buf += data[:room]
            data = data[room:]
            done = len(self._hashes) * V1_BLOCK_SIZE
            with memoryview(self._buf) as view:
                for at in range(done, len(view) - V1_BLOCK_SIZE + 1, V1_BLOCK_SIZE):
                    self._hashes.append(self.algorithm.digest(view[at : at + V1_BLOCK_SIZE]))
            if len(self._buf) == V1_SEGMENT_SIZE:
                out.append(self._emit_v1())
        return out

    def _emit_v1(self) -> HashedSegment:
        tail = len(self._hashes) * V1_BLOCK_SIZE
        if tail < len(self._buf):
            self._hashes.append(self.algorithm.digest(bytes(self._buf[tail:])))
        data = self._buf  # handed over, not copied: _emitted() starts a new buffer
        index = self._offset // V1_SEGMENT_SIZE
        segment = segment_v1(self.algorithm, index, self._offset, len(data), self._hashes, self._ks)
        return self._emitted(segment, data)

    def _cut_v2(self, *, final: bool) -> list[HashedSegment]:
        out = []
        at = 0
        with memoryview(self._buf) as view:
            for length in chunking.cut(view, final=final):
                data = bytes(view[at : at + length])
                hod = _TRUNC.digest(data)
                index = len(self._segments)
                segment = segment_v2_from_hod(index, self._offset + at, length, hod, self._ks)
                out.append(HashedSegment(segment, data))
                self._segments.append(segment)
                at += length
        del self._buf[:at]
        self._offset += at
        return out

    def _emitted(self, segment: Segment, data: bytes | bytearray) -> HashedSegment:
        self._segments.append(segment)
        self._offset += len(data)
        self._buf = bytearray()
        self._hashes = []
        return HashedSegment(segment, data)


def _build_v2(
    _algorithm: HashAlgorithm, segments: Sequence[Segment], start: int, end: int
) -> ContentInformation:
    return build_v2(segments, start, end)


def hash_bytes(
    data: bytes | memoryview,
    *,
    version: int = 1,
    algorithm: HashAlgorithm = HashAlgorithm.SHA256,
    ks: bytes,
) -> ContentInformation:
    """Content information for ``data`` held in memory (small content, tests)."""
    hasher = StreamHasher(version=version, algorithm=algorithm, ks=ks)
    hasher.feed(data)
    hasher.finish()
    return hasher.content_information()
