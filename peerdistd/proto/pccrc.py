"""MS-PCCRC content information, V1 and V2 (PROTOCOLS.md section 1): the public API.

Parse and serialize (:meth:`ContentInformation.parse`, :meth:`ContentInformation.to_bytes`,
:func:`parse_partial`), derive keys (:func:`server_secret_key`, :func:`segment_secret`,
:func:`segment_id`) and build from hashed segments (:func:`segment_v1`, :func:`segment_v2`,
:func:`build_v1`, :func:`build_v2`). Hashing files and streams lives in
``peerdistd.store.hasher``; V2 segment boundaries in ``peerdistd.proto.chunking``.

Empty content (0 bytes) is not covered by the spec; our convention is a content information
with no segments and the range [0, 0): V1 is the 18-byte header with cSegments = 0 and both
range fields 0; V2 is the 31-byte header with no chunk and every range field 0. It has no
blocks, and ``parse`` accepts exactly these forms (a non-zero range field without segments
is a DecodeError).
"""

from __future__ import annotations

from peerdistd.proto.pccrc_hash import (
    SEGMENT_ID_MAGIC,
    V1_BLOCK_SIZE,
    V1_SEGMENT_SIZE,
    V2_MAX_SEGMENT_SIZE,
    HashAlgorithm,
    segment_id,
    segment_secret,
    server_secret_key,
)
from peerdistd.proto.pccrc_info import (
    ContentInformation,
    PartialContentInformation,
    build_v1,
    build_v2,
    parse_partial,
)
from peerdistd.proto.pccrc_segment import (
    BlockRef,
    Segment,
    segment_v1,
    segment_v2,
    segment_v2_from_hod,
)

__all__ = [
    "SEGMENT_ID_MAGIC",
    "V1_BLOCK_SIZE",
    "V1_SEGMENT_SIZE",
    "V2_MAX_SEGMENT_SIZE",
    "BlockRef",
    "ContentInformation",
    "HashAlgorithm",
    "PartialContentInformation",
    "Segment",
    "build_v1",
    "build_v2",
    "parse_partial",
    "segment_id",
    "segment_secret",
    "segment_v1",
    "segment_v2",
    "segment_v2_from_hod",
    "server_secret_key",
]
