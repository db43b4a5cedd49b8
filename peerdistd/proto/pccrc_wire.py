"""Shared state of the V1/V2 content-information decoders (internal)."""

from __future__ import annotations

from dataclasses import dataclass, field

from peerdistd.proto.pccrc_hash import HashAlgorithm
from peerdistd.proto.pccrc_segment import Segment


class Truncated(Exception):
    # Internal control flow: parse turns it into DecodeError, parse_partial into progress.
    """The input ended inside a structure that starts at ``offset``."""

    def __init__(self, what: str, offset: int) -> None:
        super().__init__(what)
        self.what = what
        self.offset = offset


@dataclass(slots=True)
class Progress:
    """What a decoder has established so far; a truncated input leaves it half filled."""

    version: int = 0
    algorithm: HashAlgorithm | None = None
    start: int | None = None  # absolute range start, once known
    end: int | None = None  # absolute range end, once known
    wire_range: int = 0  # V1 dwReadBytesInLastSegment / V2 ullLengthOfRange as on the wire
    first_index: int = 0  # V2 ullIndexOfFirstSegment (V1: derived from the offset)
    segments: list[Segment] = field(default_factory=list)
    chunk_counts: list[int] = field(default_factory=list)  # V2: segments per chunk
    complete: bool = False


def need(data: memoryview, pos: int, size: int, what: str) -> None:
    """Raise :class:`Truncated` unless ``size`` bytes are present at ``pos``."""
    if len(data) - pos < size:
        raise Truncated(what, pos)
