"""``peerdist origin`` (peerdistd.origin) against a real daemon: what each kind of client gets.

The clients here are raw HTTP requests with the exact headers of PROTOCOLS.md section 5: a
plain client, iPXE (peerdist GET, then per-block MissingDataRequest ranges), Windows 7 (1.0).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDict

from peerdistd.api.client import PeerDistClient
from peerdistd.origin import FileKey, RunningOrigin, running_origin
from peerdistd.proto.pccrc import ContentInformation
from peerdistd.proto.pccrtp import ReplyKind
from tests.harness import DaemonProcess, start_daemon

SIZE = 700_000  # V1: 11 blocks, the last short; V2: several content-defined segments
CONTENT = random.Random(5).randbytes(SIZE)
IPXE_GET = {
    "Accept-Encoding": "peerdist",
    "X-P2P-PeerDist": "Version=1.1",
    "X-P2P-PeerDistEx": "MinContentInformation=1.0, MaxContentInformation=2.0",
}
IPXE_MISSING = {"X-P2P-PeerDist": "Version=1.1, MissingDataRequest=true"}
WIN7_GET = {"Accept-Encoding": "gzip, deflate, peerdist", "X-P2P-PeerDist": "Version=1.0"}
PLAIN = {"Accept-Encoding": "identity"}  # aiohttp would otherwise offer gzip


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    root = Path(tempfile.mkdtemp(prefix="pdo", dir="/tmp"))  # short: sun_path has 108 bytes
    d = start_daemon(root)
    try:
        yield d
    finally:
        d.stop()
        d.notify.close()
        shutil.rmtree(root)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "www" / "sub").mkdir(parents=True)
    (tmp_path / "www" / "f.bin").write_bytes(CONTENT)
    return tmp_path / "www"


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[PeerDistClient]:
    async with PeerDistClient(daemon.socket) as c:
        yield c


@pytest.fixture
async def origin(folder: Path, client: PeerDistClient) -> AsyncIterator[RunningOrigin]:
    async with running_origin(folder, client, port=0) as o:
        yield o


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], method: str = "GET"
) -> tuple[int, CIMultiDict[str], bytes]:
    async with http.request(method, url, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


def key_of(path: Path) -> FileKey:
    st = path.stat()
    return FileKey(str(path.resolve()), st.st_size, st.st_mtime_ns)


async def test_plain_client_gets_the_plain_file(
    origin: RunningOrigin, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await get(http, origin.url + "/f.bin", PLAIN)
    assert (status, body) == (200, CONTENT)
    assert "Content-Encoding" not in headers and "X-P2P-PeerDist" not in headers
    assert headers["Vary"] == "Accept-Encoding"
    assert headers["ETag"] and headers["Last-Modified"] and headers["Accept-Ranges"] == "bytes"
    status, headers, body = await get(
        http, origin.url + "/f.bin", {**PLAIN, "Range": "bytes=10-19"}
    )
    assert (status, body, headers["Content-Range"]) == (206, CONTENT[10:20], f"bytes 10-19/{SIZE}")
    status, headers, body = await get(http, origin.url + "/f.bin", IPXE_GET, method="HEAD")
    assert (status, body, headers.get("Content-Encoding")) == (200, b"", None)
    assert origin.stats.requests == {
        ReplyKind.IDENTITY: 3,
        ReplyKind.PEERDIST: 0,
        ReplyKind.MISSING_DATA: 0,
    }
    assert origin.stats.body_bytes[ReplyKind.IDENTITY] == SIZE + 10
    assert origin.stats.summary() == (
        f"served identity 3 ({SIZE + 10} bytes), peerdist 0 (0 bytes), missing-data 0 (0 bytes)"
    )


async def test_ipxe_request_sequence(
    origin: RunningOrigin, folder: Path, client: PeerDistClient, http: aiohttp.ClientSession
) -> None:
    url = origin.url + "/f.bin"
    _, plain, _ = await get(http, url, PLAIN)
    status, headers, body = await get(http, url, IPXE_GET)
    assert status == 200
    assert headers["Content-Encoding"] == "peerdist"
    assert headers["X-P2P-PeerDist"] == f"Version=1.1, ContentLength={SIZE}"
    assert headers["Vary"] == "Accept-Encoding"
    assert (headers["ETag"], headers["Last-Modified"]) == (plain["ETag"], plain["Last-Modified"])
    assert int(headers["Content-Length"]) == len(body)
    # The client allows 2.0, so V2: exactly what the daemon holds for the file's publication.
    info = ContentInformation.parse(body)
    assert (info.version, info.start, info.end) == (2, 0, SIZE)
    assert body == await client.content_information(key_of(folder / "f.bin").publication_id(2))
    # Then one MissingDataRequest per block (a V2 segment is one block to iPXE): 206 identity.
    blocks = list(info.blocks())
    for ref in blocks:
        ranged = {**IPXE_MISSING, "Range": f"bytes={ref.start}-{ref.end - 1}"}
        status, headers, data = await get(http, url, ranged)
        assert (status, headers.get("Content-Encoding")) == (206, None)
        assert headers["Content-Range"] == f"bytes {ref.start}-{ref.end - 1}/{SIZE}"
        assert info.verify_block(ref, data)
    assert origin.stats.requests[ReplyKind.MISSING_DATA] == len(blocks) > 1
    assert origin.stats.body_bytes[ReplyKind.MISSING_DATA] == SIZE
    assert origin.stats.body_bytes[ReplyKind.PEERDIST] == len(body)


async def test_version_1_0_client_gets_v1_and_a_1_0_answer(
    origin: RunningOrigin, http: aiohttp.ClientSession
) -> None:
    status, headers, body = await get(http, origin.url + "/f.bin", WIN7_GET)
    assert (status, headers["Content-Encoding"]) == (200, "peerdist")
    assert headers["X-P2P-PeerDist"] == f"Version=1.0, ContentLength={SIZE}"
    info = ContentInformation.parse(body)
    assert (info.version, info.start, info.end) == (1, 0, SIZE)
    # Version 1.1 without PeerDistEx: V1 as well ([MS-PCCRTP] 3.2), answered as 1.1.
    headers_11 = {"Accept-Encoding": "peerdist", "X-P2P-PeerDist": "Version=1.1"}
    status, headers, again = await get(http, origin.url + "/f.bin", headers_11)
    assert headers["X-P2P-PeerDist"] == f"Version=1.1, ContentLength={SIZE}"
    assert again == body


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [("bytes=100000-399999", 100_000, 400_000), ("bytes=-5000", SIZE - 5000, SIZE)],
)
async def test_range_with_peerdist_gets_content_information_for_the_range(
    origin: RunningOrigin,
    folder: Path,
    client: PeerDistClient,
    http: aiohttp.ClientSession,
    range_header: str,
    start: int,
    end: int,
) -> None:
    wanted = {
        **IPXE_GET,
        "X-P2P-PeerDistEx": "MinContentInformation=1.0, MaxContentInformation=1.0",
    }
    status, headers, body = await get(
        http, origin.url + "/f.bin", {**wanted, "Range": range_header}
    )
    assert (status, headers["Content-Encoding"]) == (200, "peerdist")
    assert headers["X-P2P-PeerDist"] == f"Version=1.1, ContentLength={end - start}"
    info = ContentInformation.parse(body)
    assert (info.version, info.start, info.end) == (1, start, end)
    pub_id = key_of(folder / "f.bin").publication_id(1)
    assert body == await client.content_information(pub_id, offset=start, length=end - start)


async def test_unsatisfiable_range_with_peerdist_is_left_to_plain_http(
    origin: RunningOrigin, http: aiohttp.ClientSession
) -> None:
    status, headers, _ = await get(
        http, origin.url + "/f.bin", {**IPXE_GET, "Range": f"bytes={SIZE}-"}
    )
    assert (status, headers["Content-Range"]) == (416, f"bytes */{SIZE}")
    assert "Content-Encoding" not in headers


async def test_no_daemon_means_identity_never_a_failed_download(
    folder: Path, tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "peerdistd.origin")
    async with (
        PeerDistClient(tmp_path / "nowhere.sock") as nobody,
        running_origin(folder, nobody, port=0) as origin,
    ):
        for _ in range(3):
            status, headers, body = await get(http, origin.url + "/f.bin", IPXE_GET)
            assert (status, body) == (200, CONTENT)
            assert "Content-Encoding" not in headers and "X-P2P-PeerDistEx" not in headers
    # Said once, not once per request.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "no content information (serving plain bytes): cannot reach peerdistd at "
        f"{tmp_path / 'nowhere.sock'}: No such file or directory — is it running?"
    ]


async def test_still_hashing_gets_identity_with_make_hash_request(
    folder: Path, client: PeerDistClient, http: aiohttp.ClientSession
) -> None:
    async with running_origin(folder, client, port=0, hash_wait=0) as origin:
        status, headers, body = await get(http, origin.url + "/f.bin", IPXE_GET)
        assert (status, body) == (200, CONTENT)
        assert headers["X-P2P-PeerDistEx"] == "MakeHashRequest=true"
        assert headers["X-P2P-PeerDist"] == "Version=1.1"
        assert "Content-Encoding" not in headers
        await origin.publisher.settle()  # the hashing went on in the background
        asked_again = {
            **IPXE_GET,
            "X-P2P-PeerDistEx": IPXE_GET["X-P2P-PeerDistEx"] + ", HashRequest=true",
        }
        status, headers, body = await get(http, origin.url + "/f.bin", asked_again)
        assert (status, headers["Content-Encoding"]) == (200, "peerdist")
        assert ContentInformation.parse(body).end == SIZE


async def test_a_changed_file_is_republished_and_the_old_one_withdrawn(
    origin: RunningOrigin, folder: Path, client: PeerDistClient, http: aiohttp.ClientSession
) -> None:
    path = folder / "f.bin"
    _, _, first = await get(http, origin.url + "/f.bin", IPXE_GET)
    old_id = key_of(path).publication_id(2)
    path.write_bytes(CONTENT[::-1] + b"more")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    _, headers, second = await get(http, origin.url + "/f.bin", IPXE_GET)
    assert headers["X-P2P-PeerDist"] == f"Version=1.1, ContentLength={SIZE + 4}"
    assert second != first and ContentInformation.parse(second).end == SIZE + 4
    ids = {p.id for p in await client.publications()}
    assert key_of(path).publication_id(2) in ids and old_id not in ids


async def test_only_the_files_of_the_folder_and_never_their_gz_siblings(
    origin: RunningOrigin, folder: Path, http: aiohttp.ClientSession
) -> None:
    (folder / "f.bin.gz").write_bytes(b"not the content")
    (folder.parent / "secret").write_bytes(b"secret")
    status, headers, body = await get(http, origin.url + "/f.bin", {"Accept-Encoding": "gzip"})
    assert (status, body, headers.get("Content-Encoding")) == (200, CONTENT, None)
    missing = {**IPXE_MISSING, "Accept-Encoding": "gzip", "Range": "bytes=0-9"}
    status, headers, body = await get(http, origin.url + "/f.bin", missing)
    assert (status, body, headers.get("Content-Encoding")) == (206, CONTENT[:10], None)
    for path in ("/%2e%2e/secret", "/sub", "/sub/", "/nothing", "/"):
        status, _, _ = await get(http, origin.url + path, IPXE_GET)
        assert status == 404, path


async def test_malformed_peerdist_headers_get_the_plain_file(
    origin: RunningOrigin, http: aiohttp.ClientSession
) -> None:
    bad = {**IPXE_GET, "X-P2P-PeerDistEx": "MinContentInformation=one"}
    status, headers, body = await get(http, origin.url + "/f.bin", bad)
    assert (status, body, headers.get("Content-Encoding")) == (200, CONTENT, None)


async def test_a_publication_withdrawn_behind_its_back_is_published_again(
    origin: RunningOrigin, folder: Path, client: PeerDistClient, http: aiohttp.ClientSession
) -> None:
    _, _, first = await get(http, origin.url + "/f.bin", IPXE_GET)
    await client.unpublish(key_of(folder / "f.bin").publication_id(2))
    status, headers, again = await get(http, origin.url + "/f.bin", IPXE_GET)
    assert (status, headers["Content-Encoding"], again) == (200, "peerdist", first)


async def test_once_hashed_for_one_version_the_other_is_ready_too(
    folder: Path, client: PeerDistClient, http: aiohttp.ClientSession
) -> None:
    # Microsoft's suite asks for V1, then for V2 of the same file, and expects peerdist both
    # times (not identity with MakeHashRequest for the second version).
    async with running_origin(folder, client, port=0, hash_wait=0) as origin:
        status, headers, body = await get(http, origin.url + "/f.bin", WIN7_GET)
        assert headers.get("X-P2P-PeerDistEx") == "MakeHashRequest=true"
        await origin.publisher.settle()
        status, headers, body = await get(http, origin.url + "/f.bin", WIN7_GET)
        assert (status, headers["Content-Encoding"]) == (200, "peerdist")
        assert ContentInformation.parse(body).version == 1
        status, headers, body = await get(http, origin.url + "/f.bin", IPXE_GET)
        assert (status, headers.get("Content-Encoding")) == (200, "peerdist")
        assert ContentInformation.parse(body).version == 2
