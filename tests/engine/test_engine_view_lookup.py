"""Block and segment lookups of a content view (engine.view) give what a walk over every
segment gives, for V1 and V2 and for ranges; they bisect instead of listing the segments
again for every block (a V2 content has thousands of segments)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from peerdistd.engine.view import ContentView, view_from_bytes
from peerdistd.proto.pccrc import BlockRef
from tests.content import content, content_information

SIZE = 33 * 2**20 + 1234  # V1: two segments (32 MiB each); V2: hundreds


def walked_blocks(view: ContentView, offset: int, limit: int) -> Iterator[BlockRef]:
    """The reference: every segment, every block, in order."""
    limit = min(limit, view.end)
    for seg in view.segments:
        for index, digest in enumerate(seg.block_hashes):
            start, end = seg.block_span(index)
            if end > offset and start < limit:
                yield BlockRef(seg, index, start, end, digest)


def walked_ids(view: ContentView, lo: int, hi: int) -> list[bytes]:
    return [s.segment_id for s in view.segments if s.offset < hi and s.offset + s.length > lo]


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("ranged", [False, True])
def test_lookups_match_a_walk_over_every_segment(version: int, ranged: bool) -> None:
    data = content(SIZE, seed=97)
    info = content_information(data, version)
    if ranged:
        info = info.sub_range(3 * 65536 + 10, SIZE - 5 * 65536)
    view = view_from_bytes(info.to_bytes())
    assert len(view.segments) > 1
    rng = random.Random(version * 10 + ranged)
    offsets = [view.start, view.end - 1, *(rng.randrange(view.start, view.end) for _ in range(60))]
    for offset in offsets:
        limit = offset + rng.choice([1, 65536, 5 * 65536, 40 * 65536, SIZE])
        assert list(view.blocks_from(offset, limit)) == list(walked_blocks(view, offset, limit))
        ref = view.block_at(offset)
        assert ref is not None and ref.start <= offset < ref.end
        assert view.segment_ids(offset, limit) == walked_ids(view, offset, limit)
        count = rng.choice([0, 1, 2, 7, 64, 10**6])  # the first ``count`` only
        ids = view.segment_ids(offset, view.end, limit=count)
        assert ids == walked_ids(view, offset, view.end)[:count]
    assert view.segment_ids() == walked_ids(view, view.start, view.end)
    assert view.block_at(view.end + 10**9) is None
