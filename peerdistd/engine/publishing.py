"""ServerPublishStream: hash a body into content information and keep its blocks.

The body is hashed while it streams in (MS-PCCRC 2.2); every completed segment goes into the
block cache at once, already verified by construction, so the node can serve it to peers.
Hashing and disk writes run in a worker thread, overlapped with receiving the next bytes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

from peerdistd import errors
from peerdistd.engine.commit import GroupCommit
from peerdistd.engine.ports import BlockStore
from peerdistd.proto.pccrc import ContentInformation, HashAlgorithm, server_secret_key
from peerdistd.store.blockcache import SegmentRecord
from peerdistd.store.hasher import HashedSegment, StreamHasher
from peerdistd.store.publications import Publication, PublicationStore

log = logging.getLogger(__name__)

ROOT_UID = 0

# Bytes gathered before one hand-over to the worker thread: large enough that the thread
# round trip costs nothing, small enough to keep memory flat.
FEED_BATCH = 4 * 1024 * 1024


def store_segments(
    store: BlockStore, version: int, algorithm: HashAlgorithm, hashed: list[HashedSegment]
) -> None:
    """Stage the hashed segments in one store call (committed before the 201)."""
    items = []
    for item in hashed:
        seg = item.segment
        record = SegmentRecord(
            segment_id=seg.segment_id,
            version=version,
            algorithm=algorithm.value,
            hod=seg.hod,
            secret=seg.secret,
            length=seg.length,
            block_size=seg.block_size,
        )
        view = memoryview(item.data)
        blocks = [
            (i, view[i * seg.block_size : (i + 1) * seg.block_size], seg.block_hashes[i])
            for i in range(len(seg.block_hashes))
        ]
        # Hashed here: proven by construction (V1 carries its full list).
        items.append((record, seg.block_hashes if version == 1 else None, blocks))
    store.stage(items)


async def publish_stream(
    store: BlockStore,
    commits: GroupCommit,
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

    # Two ordered stages on their own threads: hashing the next bytes overlaps with writing
    # the segments the previous bytes completed, and both overlap with receiving.
    loop = asyncio.get_running_loop()
    failures = commits.failures()
    size = 0
    batch: list[bytes] = []
    batched = 0
    hashing: asyncio.Future[list[HashedSegment]] | None = None
    storing: asyncio.Future[None] | None = None
    with (
        ThreadPoolExecutor(1, "publish-hash") as hash_stage,
        ThreadPoolExecutor(1, "publish-store") as store_stage,
    ):

        async def hand_over(next_hash: Callable[[], list[HashedSegment]] | None) -> None:
            nonlocal hashing, storing
            if hashing is not None:
                done = await hashing
                if storing is not None:
                    await storing
                storing = loop.run_in_executor(
                    store_stage, store_segments, store, version, algorithm, done
                )
                commits.kick()  # earlier segments sync while later ones are hashed
            hashing = None if next_hash is None else loop.run_in_executor(hash_stage, next_hash)

        try:
            async for chunk in body:
                size += len(chunk)
                batch.append(chunk)
                batched += len(chunk)
                if batched >= FEED_BATCH:
                    data = b"".join(batch)
                    batch, batched = [], 0
                    await hand_over(lambda data=data: hasher.feed(data))  # type: ignore[misc]
            tail = b"".join(batch)
            await hand_over(lambda: hasher.feed(tail) + hasher.finish())
            await hand_over(None)
            if storing is not None:
                await storing
        finally:  # on failure, let the stages finish before their pools shut down
            for fut in (hashing, storing):
                if fut is not None:
                    await asyncio.gather(fut, return_exceptions=True)
    # Durable before the publication is acknowledged: the 201 waits for the group commit
    # that holds the last of its blocks (and, batches committing in order, all the others).
    await commits.durable(failures)
    ci: ContentInformation = hasher.content_information()
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


class Publisher:
    """ServerPublishStream, ServerOpenContentInformation and ServerUnpublish for every uid.

    Each uid has its own namespace of publication ids (the store's key is (uid, id)): a
    request names an id within the caller's own namespace, so no answer depends on what
    another uid published (no existence oracle, issue 8). Root may address another uid's
    namespace by naming it (``owner``); listing without an owner shows root every uid's.
    """

    def __init__(
        self,
        store: BlockStore,
        commits: GroupCommit,
        publications: PublicationStore,
        passphrase: bytes,
        check_enabled: Callable[[], None],
        check_writable: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.commits = commits
        self.publications = publications
        self.passphrase = passphrase
        self.check_enabled = check_enabled
        self.check_writable = check_writable or check_enabled

    @staticmethod
    def namespace(uid: int, owner: int | None) -> int:
        """Whose ids a request by ``uid`` names: its own, or (root only) ``owner``'s.

        The refusal depends on the uids alone, never on which ids exist.
        """
        if owner is None or owner == uid:
            return uid
        if uid != ROOT_UID:
            raise errors.AccessDenied("only root may address another uid's publications")
        return owner

    async def publish(
        self,
        uid: int,
        body: AsyncIterator[bytes],
        *,
        pub_id: str | None,
        version: int,
        algorithm: HashAlgorithm,
        owner: int | None = None,
    ) -> Publication:
        self.check_writable()
        owner_uid = self.namespace(uid, owner)
        pub = await publish_stream(
            self.store,
            self.commits,
            body,
            pub_id=pub_id or secrets.token_hex(16),
            owner_uid=owner_uid,
            version=version,
            algorithm=algorithm,
            passphrase=self.passphrase,
        )
        # synchronous=FULL: on stable storage when add returns, before the 201 (in a thread:
        # the fsync must not stall the event loop).
        await asyncio.to_thread(self.publications.add, pub)
        log.info(
            "published %r for uid %d: %d bytes, V%d %s, %d segments",
            pub.id, owner_uid, pub.size, pub.version, algorithm.name.lower(), len(pub.segment_ids),
        )  # fmt: skip
        return pub

    def publication(self, uid: int, pub_id: str, owner: int | None = None) -> Publication:
        self.check_enabled()
        pub = self.publications.get(self.namespace(uid, owner), pub_id)
        if pub is None:
            raise errors.InvalidParameter(f"no publication {pub_id!r}")
        return pub

    def list_publications(self, uid: int, owner: int | None = None) -> list[Publication]:
        """The caller's publications; root's call without ``owner`` lists every uid's."""
        self.check_enabled()
        if owner is None and uid == ROOT_UID:
            return self.publications.list()
        return self.publications.list(self.namespace(uid, owner))

    def content_information(
        self,
        uid: int,
        pub_id: str,
        offset: int | None,
        length: int | None,
        version: int | None,
        owner: int | None = None,
    ) -> bytes:
        pub = self.publication(uid, pub_id, owner)
        if version is not None and version != pub.version:
            raise errors.InvalidParameter(
                f"publication {pub_id!r} was published as version {pub.version}; "
                f"publish it again with version={version}"
            )
        if offset is None and length is None:
            return pub.content_information
        start = offset or 0
        size = pub.size - start if length is None else length
        if start < 0 or size <= 0 or start + size > pub.size:
            raise errors.InvalidParameter(
                f"range offset={start} length={size} is outside the content (size {pub.size})"
            )
        ci = ContentInformation.parse(pub.content_information)
        return ci.sub_range(start, size).to_bytes()

    def unpublish(self, uid: int, pub_id: str, owner: int | None = None) -> None:
        pub = self.publication(uid, pub_id, owner)
        self.publications.remove(pub.owner_uid, pub_id)
        log.info("unpublished %r of uid %d (%d bytes) at uid %d's request", pub_id,
                 pub.owner_uid, pub.size, uid)  # fmt: skip
