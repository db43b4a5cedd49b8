"""Values of the block cache and the checks every record passes before it is stored.

A segment record is self-certifying: its id (HoHoDk) is an HMAC of its HoD keyed with its
secret (PROTOCOLS.md 1.2), so :func:`check_record` recomputes it and refuses records that a
peer or a bad content-information blob could use to poison the cache.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from peerdistd.errors import DecodeError, VerificationError

# [MS-PCCRC] 2.3 dwHashAlgo (V1) and 2.4 bHashAlgo (V2, "truncated SHA-512").
ALG_SHA256 = 0x800C
ALG_SHA384 = 0x800D
ALG_SHA512 = 0x800E
ALG_V2_TRUNCATED_SHA512 = 0x04

_DIGESTS = {ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
DIGEST_SIZE = {ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64, ALG_V2_TRUNCATED_SHA512: 32}
SEGMENT_ID_SIZES = frozenset(DIGEST_SIZE.values())

# PROTOCOLS.md 1.1: V1 blocks are 64 KiB, at most 512 per 32 MiB segment ([MS-PCCRR] 2.2.1.1);
# V2 segments are one block of at most 128 KiB ([MS-PCCRC] 2.4.1.2).
V1_BLOCK_SIZE = 65536
V1_MAX_SEGMENT = 512 * V1_BLOCK_SIZE
V2_MAX_SEGMENT = 128 * 1024

# PROTOCOLS.md 1.2 and pitfall 1: UTF-16LE "MS_P2P_CACHING" plus a 2-byte NUL.
SEGMENT_ID_MAGIC = "MS_P2P_CACHING\0".encode("utf-16-le")


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """What the cache must know about a segment to verify and serve its blocks."""

    segment_id: bytes  # HoHoDk
    version: int  # content information version, 1 or 2
    algorithm: int  # wire id of the hash algorithm
    hod: bytes
    secret: bytes  # Kp, the key peers' blocks are encrypted with
    length: int  # full segment length
    block_size: int  # V1 65536; V2 == length

    @property
    def block_count(self) -> int:
        """Number of blocks of the whole segment."""
        return -(-self.length // self.block_size)

    def block_length(self, index: int) -> int:
        """Length of block ``index`` (the last one may be short)."""
        return min(self.block_size, self.length - index * self.block_size)


# What BlockCache.stage takes per segment of a run: its record, its full V1 block hash list
# (None for V2 or a range's partial list) and its verified (index, bytes, hash) blocks.
StagedSegment = tuple[
    SegmentRecord,
    Sequence[bytes] | None,
    Iterable[tuple[int, bytes | memoryview, bytes]],
]


@dataclass(frozen=True, slots=True)
class CacheUsage:
    bytes_used: int
    limit_bytes: int
    segments: int
    blocks: int
    evictions: int
    bad_blocks_from_disk: int = 0  # blocks whose bytes failed their hash on a read


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Outcome of :meth:`BlockCache.verify`; ``bad_blocks`` were dropped."""

    segments: int
    blocks: int
    bad_blocks: int
    bytes_dropped: int
    orphan_files: int


def check_segment_id(segment_id: bytes) -> None:
    """Reject ids that no hash algorithm produces (hostile probes and requests)."""
    if not isinstance(segment_id, bytes) or len(segment_id) not in SEGMENT_ID_SIZES:
        size = len(segment_id) if isinstance(segment_id, bytes | bytearray) else None
        raise DecodeError(f"segment id must be 32, 48 or 64 bytes, got {size!r}")


def block_digest(algorithm: int, data: bytes | memoryview) -> bytes:
    """Block hash (V1) or segment HoD (V2) of ``data`` (PROTOCOLS.md 1.2)."""
    if algorithm == ALG_V2_TRUNCATED_SHA512:
        # T(x) is SHA-512 cut to 32 bytes, not SHA-512/256 (PROTOCOLS.md 1.2).
        return hashlib.sha512(data).digest()[:32]
    name = _DIGESTS.get(algorithm)
    if name is None:
        raise DecodeError(f"unknown hash algorithm 0x{algorithm:X}")
    return hashlib.new(name, data).digest()


def derive_segment_id(algorithm: int, hod: bytes, secret: bytes) -> bytes:
    """HoHoDk = HMAC(Kp, HoD || MAGIC); V2 truncates HMAC-SHA-512 to 32 bytes."""
    if algorithm == ALG_V2_TRUNCATED_SHA512:
        return hmac.digest(secret, hod + SEGMENT_ID_MAGIC, "sha512")[:32]
    return hmac.digest(secret, hod + SEGMENT_ID_MAGIC, _DIGESTS[algorithm])


def check_record(record: SegmentRecord) -> None:
    """Raise DecodeError for impossible shapes, VerificationError for a forged id."""
    check_segment_id(record.segment_id)
    size = DIGEST_SIZE.get(record.algorithm)
    if record.version == 1:
        ok = record.algorithm in _DIGESTS and record.block_size == V1_BLOCK_SIZE
        ok = ok and 0 < record.length <= V1_MAX_SEGMENT
    elif record.version == 2:
        ok = record.algorithm == ALG_V2_TRUNCATED_SHA512 and record.block_size == record.length
        ok = ok and 0 < record.length <= V2_MAX_SEGMENT
    else:
        ok = False
    if not ok or size is None:
        raise DecodeError(
            f"impossible segment: version {record.version}, algorithm 0x{record.algorithm:X}, "
            f"length {record.length}, block size {record.block_size}"
        )
    if len(record.hod) != size or len(record.secret) != size or len(record.segment_id) != size:
        raise DecodeError("segment id, HoD and secret must all have the digest size")
    if not hmac.compare_digest(
        derive_segment_id(record.algorithm, record.hod, record.secret), record.segment_id
    ):
        raise VerificationError("segment id is not HMAC(secret, HoD || magic)")


def check_block(record: SegmentRecord, index: int, size: int, digest: bytes) -> None:
    """Reject a block that cannot belong to ``record`` at ``index``."""
    if not 0 <= index < record.block_count:
        raise DecodeError(f"block index {index} outside the segment")
    if size != record.block_length(index):
        raise DecodeError(f"block {index} is {size} bytes, not {record.block_length(index)}")
    if len(digest) != DIGEST_SIZE[record.algorithm]:
        raise DecodeError(f"block hash of {len(digest)} bytes")
    if record.version == 2 and digest != record.hod:
        # A V2 segment is one block whose hash is the segment's HoD (PROTOCOLS.md 1.4).
        raise VerificationError("V2 segment hash differs from its HoD")
