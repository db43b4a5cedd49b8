"""A lying peer for tests: with ``LYING_PEER=1`` the daemon serves peers whatever its block
files hold, unverified (a real daemon never does: docs/trust.md). Put this directory on
PYTHONPATH to make a node that sends bad blocks, so that bans can be tested."""

from __future__ import annotations

import os


def _install() -> None:
    from peerdistd.store.blockcache import BlockCache

    def read_proven(self: BlockCache, segment_id: bytes, index: int) -> bytes | None:
        with self._lock:
            seg = self._table.get(segment_id)
            if seg is None or index not in seg.lengths:
                return None
            fd = self._table.fd(seg)
            assert fd is not None
            return os.pread(fd, seg.lengths[index], index * seg.record.block_size)

    BlockCache.read_proven = read_proven  # type: ignore[method-assign]


if os.environ.get("LYING_PEER") == "1":
    _install()
