"""ServerPublishStream: hash a body into content information and keep its blocks.

The body is hashed while it streams in (MS-PCCRC 2.2); every completed segment goes into the
block cache at once, already verified by construction, so the node can serve it to peers.
Hashing and disk writes run in a worker thread, overlapped with receiving the next bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from peerdistd.engine.ports import BlockStore
from peerdistd.proto.pccrc import ContentInformation, HashAlgorithm, server_secret_key
from peerdistd.store.blockcache import SegmentRecord
from peerdistd.store.hasher import HashedSegment, StreamHasher
from peerdistd.store.publications import Publication

# Bytes gathered before one hand-over to the worker thread: large enough that the thread
# round trip costs nothing, small enough to keep memory flat.
FEED_BATCH = 4 * 1024 * 1024


def store_segments(
    store: BlockStore, version: int, algorithm: HashAlgorithm, hashed: list[HashedSegment]
) -> None:
    for item in hashed:
        seg = item.segment
        store.add_segment(
            SegmentRecord(
                segment_id=seg.segment_id,
                version=version,
                algorithm=algorithm.value,
                hod=seg.hod,
                secret=seg.secret,
                length=seg.length,
                block_size=seg.block_size,
            )
        )
        view = memoryview(item.data)
        blocks = [
            (i, view[i * seg.block_size : (i + 1) * seg.block_size], seg.block_hashes[i])
            for i in range(len(seg.block_hashes))
        ]
        store.put_blocks(seg.segment_id, blocks)


async def publish_stream(
    store: BlockStore,
    body: AsyncIterator[bytes],
    *,
    pub_id: str,
    owner_uid: int,
    version: int,
    algorithm: HashAlgorithm,
    passphrase: bytes,
) -> Publication:
    """Hash ``body`` into content information; its blocks land in ``store`` as they complete."""
    hasher = StreamHasher(
        version=version, algorithm=algorithm, ks=server_secret_key(passphrase, version)
    )

    def feed(data: bytes) -> None:
        store_segments(store, version, algorithm, hasher.feed(data))

    def finish() -> ContentInformation:
        store_segments(store, version, algorithm, hasher.finish())
        ci: ContentInformation = hasher.content_information()
        return ci

    size = 0
    batch: list[bytes] = []
    batched = 0
    pending: asyncio.Future[None] | None = None
    async for chunk in body:
        size += len(chunk)
        batch.append(chunk)
        batched += len(chunk)
        if batched >= FEED_BATCH:
            if pending is not None:
                await pending
            pending = asyncio.ensure_future(asyncio.to_thread(feed, b"".join(batch)))
            batch, batched = [], 0
    if pending is not None:
        await pending
    if batch:
        await asyncio.to_thread(feed, b"".join(batch))
    ci = await asyncio.to_thread(finish)
    return Publication(
        id=pub_id,
        owner_uid=owner_uid,
        version=version,
        algorithm=algorithm.value,
        size=size,
        content_information=ci.to_bytes(),
        created=time.time(),
        segment_ids=tuple(s.segment_id for s in ci.segments),
    )
