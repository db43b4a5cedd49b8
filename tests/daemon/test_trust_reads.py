"""Verified on every read: a block leaves the daemon only under the reader's own block hash,
and only if its bytes on disk still hash to it (docs/trust.md), against real daemons."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from peerdistd.proto.pccrc import ContentInformation
from tests.content import BLOCK, content, content_information
from tests.daemon.test_api_owners_and_bad_input import NOBODY, as_uid
from tests.harness import DaemonProcess, start_daemon

FORGED_INDEX = 5
# The background scrub would find flipped bytes too: off, so that reads are what is tested.
NO_SCRUB = {"PEERDISTD_CACHE_SCRUB_BYTES_PER_SECOND": "0"}


@pytest.fixture
def shared_daemon() -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client under a second uid (CI runs as root)")
    root = Path(tempfile.mkdtemp(prefix="peerdistd-trust-"))
    root.chmod(0o755)
    d = start_daemon(root, env={"PEERDISTD_DAEMON_SOCKET_MODE": "0666"})
    yield d
    d.stop()
    d.notify.close()


def forged_range(genuine: ContentInformation, evil: bytes) -> bytes:
    """Finding 1: the range list of blocks 0..5 with hash 5 swapped for the attacker's."""
    ranged = genuine.sub_range(FORGED_INDEX * BLOCK, BLOCK)
    seg = ranged.segments[0]
    hashes = (*seg.block_hashes[:FORGED_INDEX], hashlib.sha256(evil).digest())
    forged = dataclasses.replace(ranged, segments=(dataclasses.replace(seg, block_hashes=hashes),))
    return forged.to_bytes()


async def open_handle(api: aiohttp.ClientSession, ci: bytes) -> str:
    async with api.post("/v1/contents", data=ci) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["handle"])


async def block_read(api: aiohttp.ClientSession, h: str, offset: int) -> tuple[int, bytes]:
    params = {"offset": str(offset), "timeout_ms": "0", "max": str(BLOCK)}
    async with api.post(f"/v1/contents/{h}/block-read", params=params) as r:
        return r.status, await r.read()


@pytest.mark.parametrize("reader_ci", ["full", "range"])
async def test_forged_range_content_information_cannot_poison_reads(
    shared_daemon: DaemonProcess, reader_ci: str
) -> None:
    data = content(8 * BLOCK, seed=81)
    genuine = content_information(data)
    evil = content(BLOCK, seed=666)
    offset = FORGED_INDEX * BLOCK
    sock = shared_daemon.socket
    opened = as_uid(NOBODY, "POST", "/v1/contents", sock, forged_range(genuine, evil))
    assert opened["status"] == 201, opened
    handle = json.loads(opened["body"])["handle"]
    put = as_uid(NOBODY, "PUT", f"/v1/contents/{handle}/data?offset={offset}", sock, evil)
    assert put["status"] == 200, put  # accepted: it does match the attacker's own hash
    ci = genuine if reader_ci == "full" else genuine.sub_range(offset, 2 * BLOCK)
    async with shared_daemon.session() as api:
        h = await open_handle(api, ci.to_bytes())
        status, body = await block_read(api, h, offset)
        assert status == 424, body[:64]  # never the forged bytes
        assert json.loads(body)["error"] == "MISSING_DATA"
        block = data[offset : offset + BLOCK]
        async with api.put(
            f"/v1/contents/{h}/data", params={"offset": str(offset)}, data=block
        ) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["verified"] == BLOCK
        assert await block_read(api, h, offset) == (200, block)
    # The attacker's handle no longer finds its bytes either: the block is root's now.
    again = as_uid(
        NOBODY, "POST", f"/v1/contents/{handle}/block-read?offset={offset}&timeout_ms=0", sock
    )
    assert again["status"] == 424


def segment_files(root: Path, name: str = "node") -> list[Path]:
    return sorted((root / f"{name}-cache").rglob("*.seg"))


def flip_byte(path: Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        byte = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([byte[0] ^ 0x01]), offset)
    finally:
        os.close(fd)


async def status_of(api: aiohttp.ClientSession) -> dict:
    async with api.get("/v1/status") as r:
        return dict(await r.json())


@pytest.mark.parametrize("stopped", [True, False], ids=["daemon-stopped", "daemon-running"])
async def test_a_flipped_byte_on_disk_is_never_served(tmp_path: Path, stopped: bool) -> None:
    data = content(4 * BLOCK, seed=82)
    d = start_daemon(tmp_path, env=NO_SCRUB)
    try:
        async with d.session() as api:
            async with api.post("/v1/publications", params={"id": "p"}, data=data) as r:
                assert r.status == 201
            async with api.get("/v1/publications/p/content-information") as r:
                ci = await r.read()
        (seg_file,) = segment_files(tmp_path)
        if stopped:
            d.stop()
            d.notify.close()
            flip_byte(seg_file, 2 * BLOCK + 1234)
            d = start_daemon(tmp_path, env=NO_SCRUB)
        else:
            flip_byte(seg_file, 2 * BLOCK + 1234)
        async with d.session() as api:
            h = await open_handle(api, ci)
            async with api.post(f"/v1/contents/{h}/stream-read", params={"timeout_ms": "0"}) as r:
                assert r.status == 200
                assert await r.read() == data[: 2 * BLOCK]  # stops before the bad block
            status, body = await block_read(api, h, 2 * BLOCK)
            assert status == 424 and json.loads(body)["error"] == "MISSING_DATA"
            assert await block_read(api, h, 3 * BLOCK) == (200, data[3 * BLOCK :])
            body_status = await status_of(api)
            assert body_status["cache"]["bad_blocks_from_disk"] == 1
            assert body_status["counters"]["bad_blocks_from_disk"] == 1
            assert body_status["cache"]["blocks"] == 3  # dropped, not kept to fail again
            status, _ = await block_read(api, h, 2 * BLOCK)
            assert status == 424
            assert (await status_of(api))["cache"]["bad_blocks_from_disk"] == 1
            # The application adds the genuine block again: it is served once more.
            block = data[2 * BLOCK : 3 * BLOCK]
            async with api.put(
                f"/v1/contents/{h}/data", params={"offset": str(2 * BLOCK)}, data=block
            ) as r:
                assert r.status == 200
            assert await block_read(api, h, 2 * BLOCK) == (200, block)
        assert d.output().count("does not hash to what was stored") == 1
    finally:
        d.stop()
        d.notify.close()


async def test_bytes_read_ahead_are_not_served_once_their_blocks_left(tmp_path: Path) -> None:
    data = content(64 * BLOCK, seed=83)  # two 2 MiB stream reads
    d = start_daemon(tmp_path, env=NO_SCRUB)
    try:
        async with d.session() as api:
            async with api.post("/v1/publications", params={"id": "p"}, data=io.BytesIO(data)) as r:
                assert r.status == 201
            async with api.get("/v1/publications/p/content-information") as r:
                ci = await r.read()
            h = await open_handle(api, ci)
            read = f"/v1/contents/{h}/stream-read"
            params = {"max": str(32 * BLOCK), "timeout_ms": "0"}
            async with api.post(read, params=params) as r:
                assert (r.status, await r.read()) == (200, data[: 32 * BLOCK])
            # The next range is being verified ahead right now; then the cache is emptied.
            async with api.delete("/v1/cache", params={"publications": "true"}) as r:
                assert r.status == 200
            async with api.post(read, params=params) as r:
                assert r.status == 424, "served bytes the cache no longer holds"
                assert (await r.json())["offset"] == 32 * BLOCK
    finally:
        d.stop()
        d.notify.close()
