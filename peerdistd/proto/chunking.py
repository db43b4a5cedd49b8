"""Content-defined chunking that cuts V2 content into segments (PROTOCOLS.md 1.1).

The spec leaves V2 boundaries to the server; we cut with FastCDC 2020 (Xia et al., IEEE
TPDS 2020; Cython ``pyfastcdc``) using its default gear table (seed 0) and these
parameters, so every peerdistd node cuts the same bytes the same way:

* ``MIN_SEGMENT`` 32 KiB: no cut before it (those bytes are skipped, which is also speed);
* ``AVG_SEGMENT`` 64 KiB: the normalized-chunking centre, a 16-bit mask; level 3
  (``NORMALIZATION``) uses a 19-bit mask before it and a 13-bit one after it;
* ``MAX_SEGMENT`` 128 KiB: a forced cut, so that one segment travels as one PCCRR block.

On random data segments average about 72 KiB and 0.1 % are forced. A cut depends only on
the bytes after the previous cut, so an edit changes the segments around it and the cuts
re-align after it. Changing any parameter (or the gear table) changes every segment id.
"""

from __future__ import annotations

from typing import Final

from pyfastcdc import FastCDC

from peerdistd.proto.pccrc_hash import V2_MAX_SEGMENT_SIZE

MIN_SEGMENT = 32 * 1024
AVG_SEGMENT = 64 * 1024
MAX_SEGMENT = V2_MAX_SEGMENT_SIZE
NORMALIZATION: Final = 3

# Only ever iterated (the cut itself runs without the GIL on an immutable configuration),
# so one instance serves every thread.
_FASTCDC = FastCDC(
    AVG_SEGMENT,
    min_size=MIN_SEGMENT,
    max_size=MAX_SEGMENT,
    normalized_chunking=NORMALIZATION,
    seed=0,
)


def cut(buffer: bytes | bytearray | memoryview, *, final: bool) -> list[int]:
    """Lengths of the settled segments at the front of ``buffer``.

    A segment is settled once ``MAX_SEGMENT`` bytes from its start are known (FastCDC
    looks no further), or at the end of the content (``final``). The rest,
    ``len(buffer) - sum(result)`` bytes, must be fed again followed by the next bytes.
    """
    size = len(buffer)
    if size == 0:
        return []
    lengths = []
    for chunk in _FASTCDC.cut_buf(buffer):
        if not final and chunk.offset + MAX_SEGMENT > size:
            break
        lengths.append(chunk.length)
    return lengths
