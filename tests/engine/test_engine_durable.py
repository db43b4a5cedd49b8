"""Durable before acknowledged, at the engine's seam: publish and add-data return only once the
group commit holding their blocks is done, and fail (nothing acknowledged) when it fails."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from peerdistd import errors
from peerdistd.engine.core import Engine
from peerdistd.proto.pccrc import HashAlgorithm
from peerdistd.store.blockcache import BlockCache
from peerdistd.store.publications import PublicationStore
from tests.content import PASSPHRASE, content, content_information

UID = 1000


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    cache = BlockCache.open(tmp_path / "cache", limit_bytes=1 << 30)
    pubs = PublicationStore.open(tmp_path / "publications.db")
    yield Engine(cache, pubs, PASSPHRASE)
    pubs.close()
    cache.close()


async def _body(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 1 << 20):
        yield data[i : i + (1 << 20)]


def _break_sync(engine: Engine) -> None:
    def broken(fd: int) -> None:
        raise errors.LocalError("cannot sync the block cache: [Errno 5] Input/output error")

    cache = engine.store
    assert isinstance(cache, BlockCache)
    cache._files.sync = broken  # type: ignore[method-assign]


async def test_publish_returns_with_every_block_committed(engine: Engine) -> None:
    data = content(5 << 20, seed=3)
    pub = await engine.publisher.publish(
        UID, _body(data), pub_id="p", version=1, algorithm=HashAlgorithm.SHA256
    )
    assert engine.store.staged_bytes == 0  # nothing of it waits for a later commit
    assert engine.store.usage().bytes_used == len(data)
    assert engine.publications.get(UID, "p") == pub
    await engine.aclose()


async def test_publish_fails_when_its_commit_fails(engine: Engine) -> None:
    _break_sync(engine)
    with pytest.raises(errors.ServiceUnavailable, match="durable"):
        await engine.publisher.publish(
            UID, _body(content(3 << 20, seed=4)), pub_id="q", version=1,
            algorithm=HashAlgorithm.SHA256,
        )  # fmt: skip
    assert engine.publications.get(UID, "q") is None  # never acknowledged, never listed
    await engine.aclose()


async def test_add_data_fails_when_its_commit_fails(engine: Engine) -> None:
    data = content(2 << 20, seed=5)
    h = engine.open_content(UID, content_information(data).to_bytes())
    _break_sync(engine)
    with pytest.raises(errors.ServiceUnavailable, match="durable"):
        await engine.add_data(UID, h.id, 0, _body(data))
    assert engine.store.usage().bytes_used == 0  # the blocks were dropped, not left unsynced
    await engine.aclose()
