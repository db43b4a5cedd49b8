"""What the block cache trusts, and the record of what failed (docs/trust.md).

A block row says "these bytes hashed to H when they were stored". Who vouches for H differs:
a reader's content information names H for its own reads, and only a full V1 hash list that
hashes to the segment's HoD ([MS-PCCRC] 2.2), or V2 where the block is the segment and H is
the HoD ([MS-PCCRC] 2.4), vouches for H to everyone (*proven*). A record (length, HoD, Kp)
is bound to its id by the HMAC, except its length: a conflicting record replaces a held one
unless the held one's own verified blocks pin its length.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from peerdistd.errors import VerificationError
from peerdistd.logs import RateLimitedLogger
from peerdistd.store.cache_segments import Seg
from peerdistd.store.cache_types import SegmentRecord, block_digest


def proven_list(record: SegmentRecord, hashes: Sequence[bytes] | None) -> bytes | None:
    """``hashes`` concatenated if they are the segment's full V1 list hashing to its HoD."""
    if hashes is None or record.version != 1:
        return None
    if len(hashes) != record.block_count:
        raise VerificationError("a full hash list has one hash per block of the segment")
    joined = b"".join(hashes)
    if len(joined) != len(record.hod) * len(hashes):
        raise VerificationError("block hashes of the wrong size")
    if block_digest(record.algorithm, joined) != record.hod:
        raise VerificationError("the block hashes do not hash to the segment's HoD")
    return joined


def vouched(seg: Seg) -> bool:
    """Whether the held blocks pin the record's length (so a conflicting record is forged).

    V2: the block is held and hashes to the HoD at the record's length. V1: the list is
    proven (the block count) and the last block is held under its proven hash (its length);
    a forged length would need bytes of another length hashing to that hash.
    """
    last = seg.record.block_count - 1
    want = seg.proven_hash(last)
    return want is not None and last in seg.lengths and seg.hashes.get(last) == want


class BadBlocks:
    """Blocks that failed their hash when read from disk: counted, logged once a minute."""

    def __init__(self, logger: logging.Logger) -> None:
        self.count = 0
        self._log = RateLimitedLogger(logger, 60.0)

    def found(self, path: Path, index: int) -> None:
        self.count += 1
        self._log.warning(
            "bad-block-from-disk",
            "block %d of %s does not hash to what was stored: dropped (%d so far)",
            index,
            path,
            self.count,
        )
