"""Hosted cache mode with real daemons in a namespace of the test's own (MS-PCHC, PROTOCOLS.md 4).

A hosted cache on 127.0.0.1 (PCCRR on :8080, v1.0 offers over HTTPS on :8443 with the lab
certificate it makes) and five nodes on 127.0.0.2-6 that offer to it and read from it first.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from peerdistd.proto import blockcrypto, pccrr, pchc
from peerdistd.proto.pccrc import ContentInformation, HashAlgorithm, Segment, segment_v1
from peerdistd.proto.pccrr import Blk, BlkList, BlockRange, CryptoAlgo, GetBlks
from peerdistd.proto.pchc import InitialOffer, ResponseCode
from peerdistd.proto.pchc_client import V1Offer
from peerdistd.store.hasher import StreamHasher
from tests.harness import DaemonProcess, start_daemon
from tests.netns import enter_netns, run_in_thread
from tests.peers.test_peers_loopback import counters, read_all

SIZE = 3 * 1024 * 1024 + 12345
DATA = random.Random(10).randbytes(SIZE)
KS = hashlib.sha256(b"origin secret").digest()
HC_PCCRR = "127.0.0.1:8080"
HC_HTTPS = "127.0.0.1:8443"
V1_URL = f"https://{HC_HTTPS}{pchc.PATH_V1}"
V2_URL = f"http://{HC_PCCRR}{pchc.PATH_V2}"


def content_information(version: int) -> bytes:
    """What the origin hands out for DATA (made here: the origin is not part of the test)."""
    algorithm = HashAlgorithm.SHA256 if version == 1 else HashAlgorithm.TRUNCATED_SHA512
    ks = KS if version == 1 else hashlib.sha512(b"origin secret").digest()[:32]
    hasher = StreamHasher(version=version, algorithm=algorithm, ks=ks)
    hasher.feed(DATA)
    hasher.finish()
    return hasher.content_information().to_bytes()


class Branch:
    def __init__(self, tmp_path: Path, netns: str) -> None:
        self.tmp_path, self.netns = tmp_path, netns
        self.started: list[DaemonProcess] = []

    @property
    def cert(self) -> Path:
        return self.tmp_path / "hc-state" / "hosted-cache-cert.pem"

    def hosted_cache(self, **env: str) -> DaemonProcess:
        settings = {
            "PEERDISTD_HOSTED_CACHE_ENABLED": "true",
            "PEERDISTD_HOSTED_CACHE_LISTEN": HC_HTTPS,
            **env,
        }
        return self._start("hc", "127.0.0.1", **settings)

    def node(self, i: int, offer_version: int = 1) -> DaemonProcess:
        return self._start(
            f"node{i}",
            f"127.0.0.{i}",
            PEERDISTD_HOSTED_CACHE_SERVER=HC_HTTPS,
            PEERDISTD_HOSTED_CACHE_SERVER_V2_PORT="8080",
            PEERDISTD_HOSTED_CACHE_CA_FILE=str(self.cert),
            PEERDISTD_HOSTED_CACHE_OFFER_VERSION=str(offer_version),
        )

    def _start(self, name: str, address: str, **env: str) -> DaemonProcess:
        d = start_daemon(
            self.tmp_path,
            "--listen",
            f"{address}:8080",
            name=name,
            netns=self.netns,
            env={"PEERDISTD_PEERS_ZEROCONF": "false", **env},
        )
        self.started.append(d)
        return d

    def close(self) -> None:
        for d in self.started:
            d.stop()
            d.notify.close()


@pytest.fixture
def branch(tmp_path: Path, netns: str) -> Iterator[Branch]:
    b = Branch(tmp_path, netns)
    try:
        yield b
    finally:
        b.close()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60.0) -> None:
    """Wait for a condition the daemons reach on their own (their counters), or fail."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def counter(d: DaemonProcess, name: str) -> float:
    return (await counters(d)).get(name, 0.0)


async def download_from_origin(d: DaemonProcess, ci: bytes) -> None:
    """What an application does on a miss: fetch from the origin and add the bytes."""
    async with d.session() as api:
        async with api.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        body = io.BytesIO(DATA)
        async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=body) as r:
            assert r.status in (200, 204), await r.text()


@pytest.mark.parametrize("version", [1, 2])
async def test_offered_content_is_served_by_the_hosted_cache(branch: Branch, version: int) -> None:
    hc = branch.hosted_cache()
    ci = content_information(version)
    info = ContentInformation.parse(ci)
    blocks = len(list(info.blocks()))
    pulled = "hosted_cache_blocks_pulled" if version == 1 else "hosted_cache_unverified_blocks"
    a = branch.node(2, offer_version=version)
    await download_from_origin(a, ci)

    async def holds_all() -> bool:
        return await counter(hc, pulled) == blocks

    await until(holds_all, "the hosted cache to pull every block")
    assert await counter(hc, "hosted_cache_bad_blocks") == 0
    assert (await counters(a))["bytes_served_to_peers"] == SIZE  # all pulled from A
    a.stop()  # the offerer goes away
    for i in (3, 4, 5):
        reader = branch.node(i, offer_version=version)
        assert await read_all(reader, ci) == DATA
        got = await counters(reader)
        assert got["bytes_from_peers"] == SIZE and got["bytes_from_origin"] == 0
    # A second offer of the same content moves no block.
    d = branch.node(6, offer_version=version)
    await download_from_origin(d, ci)

    async def offered() -> bool:
        return await counter(d, "hosted_cache_segments_offered") == len(info.segments)

    await until(offered, "the second offer to be made")
    assert await counter(hc, pulled) == blocks
    assert (await counters(d))["bytes_served_to_peers"] == 0


# -- offers made by hand: a corrupt offerer, the suite's key reading, the drop cases ----------


def v1_segment() -> tuple[Segment, bytes]:
    data = DATA[:200_000]
    hashes = [hashlib.sha256(data[i : i + 65536]).digest() for i in range(0, len(data), 65536)]
    return segment_v1(HashAlgorithm.SHA256, 0, 0, len(data), hashes, KS), data


def offerer_app(segment: Segment, data: bytes, style: str) -> web.Application:
    """A PCCRR server holding ``segment``: "corrupt" sends wrong bytes under the right key,
    "suite" encrypts with the whole 32-byte Kp while saying AES-128, as Microsoft's suite."""

    async def serve(request: web.Request) -> web.Response:
        ask = pccrr.parse_request(await request.read())
        assert isinstance(ask, GetBlks)
        index = ask.ranges[0].index
        plain = data[index * 65536 : (index + 1) * 65536]
        if style == "corrupt":
            plain = bytes(b ^ 0x55 for b in plain)
        algo = CryptoAlgo.AES_256 if style == "suite" else CryptoAlgo.AES_128
        block, iv = blockcrypto.encrypt(algo, segment.secret, plain)
        msg = Blk(segment.segment_id, index, 0, block, b"", iv, crypto=CryptoAlgo.AES_128)
        return web.Response(body=pccrr.serialize_response(msg))

    app = web.Application()
    app.router.add_post(pccrr.MAGIC_PATH, serve)
    return app


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> bytes:
    async with session.post(url, data=body) as r:
        assert r.status == 200
        return await r.read()


async def offer_v1(session: aiohttp.ClientSession, segment: Segment, port: int) -> None:
    offer = V1Offer(segment, HashAlgorithm.SHA256, port, bytes(16))
    step = offer.answer(await post(session, V1_URL, offer.start()))
    assert pchc.parse_response(await post(session, V1_URL, step.body)) is ResponseCode.OK


async def dropped(session: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    """True if the hosted cache closed the connection instead of answering."""
    try:
        async with session.post(url, data=body) as r:
            await r.read()
    except aiohttp.ClientConnectionError:  # ServerDisconnectedError, reset, ...
        return True
    return False


async def test_hand_made_offers(branch: Branch) -> None:
    hc = branch.hosted_cache()
    segment, data = v1_segment()
    cert = branch.cert

    async def scenario() -> tuple[list[bool], list[bytes]]:
        enter_netns(branch.netns)
        context = ssl.create_default_context(cafile=str(cert))
        runners = []
        for port, style in ((9001, "corrupt"), (9002, "suite")):
            runner = web.AppRunner(offerer_app(segment, data, style))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.5", port).start()
            runners.append(runner)
        try:
            # Offers leave from the fake offerers' address: the hosted cache connects back there.
            local = ("127.0.0.5", 0)
            connector = aiohttp.TCPConnector(ssl=context, force_close=True, local_addr=local)
            async with aiohttp.ClientSession(connector=connector) as session:
                # A repeated INITIAL_OFFER is answered INTERESTED each time.
                initial = pchc.serialize(InitialOffer(9001, segment.segment_id))
                codes = [pchc.parse_response(await post(session, V1_URL, initial)) for _ in (1, 2)]
                assert codes == [ResponseCode.INTERESTED] * 2
                # The corrupt offerer first: nothing it sends is kept.
                await offer_v1(session, segment, 9001)
                await until(lambda: _bad(hc), "the corrupt block to be refused")
                empty = await _block_list(session, segment.segment_id)
                # Then the suite-style offerer: its blocks verify under the whole-Kp reading.
                await offer_v1(session, segment, 9002)
                await until(lambda: _pulled(hc, 4), "the suite-style blocks to be kept")
                # An iPXE-shaped client: GETBLKS straight to the hosted cache, one block each.
                blocks = [await _ipxe_get(session, segment, i) for i in range(4)]
                drops = [
                    await dropped(session, V1_URL, b"junk"),
                    await dropped(session, V1_URL, initial[:20]),  # a truncated id
                    await dropped(session, V2_URL, initial),  # v1.0 on the v2.0 path
                    await dropped(session, V1_URL, bytes.fromhex("0002000300000000") + bytes(8)),
                ]
        finally:
            for runner in runners:
                await runner.cleanup()
        assert empty == b""
        return drops, blocks

    drops, blocks = run_in_thread(scenario)
    assert drops == [True, True, True, True]
    assert b"".join(blocks) == data
    got = await counters(hc)
    assert got["hosted_cache_blocks_pulled"] == 4 and got["hosted_cache_bad_blocks"] >= 1
    assert got["hosted_cache_offers_dropped"] == 4


async def _bad(hc: DaemonProcess) -> bool:
    return await counter(hc, "hosted_cache_bad_blocks") >= 1


async def _pulled(hc: DaemonProcess, count: int) -> bool:
    return await counter(hc, "hosted_cache_blocks_pulled") == count


async def _block_list(session: aiohttp.ClientSession, segment_id: bytes) -> bytes:
    """The blocks of the segment the hosted cache holds, as BLKLIST ranges (b"" = none)."""
    ask = pccrr.serialize(pccrr.GetBlkList(segment_id, (BlockRange(0, 512),)))
    async with session.post(f"http://{HC_PCCRR}{pccrr.MAGIC_PATH}", data=ask) as r:
        msg = pccrr.parse_response(await r.read())
    assert isinstance(msg, BlkList)
    return b"".join(f"{r.index}+{r.count}".encode() for r in msg.ranges)


async def _ipxe_get(session: aiohttp.ClientSession, segment: Segment, index: int) -> bytes:
    ask = pccrr.serialize(GetBlks(segment.segment_id, (BlockRange(index, 1),)))
    async with session.post(f"http://{HC_PCCRR}{pccrr.MAGIC_PATH}", data=ask) as r:
        msg = pccrr.parse_response(await r.read())
    assert isinstance(msg, Blk) and msg.block_index == index and msg.block
    length = min(65536, segment.length - index * 65536)
    plain = blockcrypto.decrypt(msg.crypto, segment.secret, msg.iv, msg.block, length)
    assert hashlib.sha256(plain).digest() == segment.block_hashes[index]  # what iPXE checks
    return plain


async def test_the_unverified_share_holds(branch: Branch) -> None:
    # v2 offers of 3 MiB to a hosted cache that keeps at most 1 MiB of unverified blocks.
    limit = 1 << 20
    hc = branch.hosted_cache(
        PEERDISTD_HOSTED_CACHE_UNVERIFIED_LIMIT_BYTES=str(limit),
        PEERDISTD_HOSTED_CACHE_UNVERIFIED_PER_OFFERER_BYTES=str(limit),
    )
    ci = content_information(2)
    segments = len(ContentInformation.parse(ci).segments)
    a = branch.node(2, offer_version=2)
    await download_from_origin(a, ci)

    async def all_seen() -> bool:
        got = await counters(hc)
        seen = got.get("hosted_cache_unverified_blocks", 0) + got.get(
            "hosted_cache_unverified_refused", 0
        )
        return seen == segments

    await until(all_seen, "every offered segment to be pulled or refused")
    kept = branch.tmp_path / "hc-cache" / "offered"
    used = sum(p.stat().st_size for p in kept.iterdir())
    assert 0 < used <= limit
    assert await counter(hc, "hosted_cache_unverified_refused") > 0


async def test_a_hosted_cache_found_with_dns_sd(branch: Branch) -> None:
    """hosted_cache.server = "dns-sd": the node offers to the hosted cache zeroconf announced."""
    # DNS-SD names the host only: v1.0 offers go to port 443, as Windows' (a namespace of ours).
    hc = branch.hosted_cache(
        PEERDISTD_PEERS_ZEROCONF="true", PEERDISTD_HOSTED_CACHE_LISTEN="127.0.0.1:443"
    )
    a = branch._start(
        "node2",
        "127.0.0.2",
        PEERDISTD_PEERS_ZEROCONF="true",
        PEERDISTD_HOSTED_CACHE_SERVER="dns-sd",
        PEERDISTD_HOSTED_CACHE_SERVER_V2_PORT="8080",
        PEERDISTD_HOSTED_CACHE_CA_FILE=str(branch.cert),
    )

    async def announced() -> bool:
        async with a.session() as api, api.get("/v1/peers") as r:
            peers = (await r.json())["peers"]
        return any(p["address"] == HC_PCCRR and p["source"] == "zeroconf" for p in peers)

    await until(announced, "the hosted cache's DNS-SD announcement")
    ci = content_information(1)
    await download_from_origin(a, ci)
    blocks = len(list(ContentInformation.parse(ci).blocks()))

    async def holds_all() -> bool:
        return await counter(hc, "hosted_cache_blocks_pulled") == blocks

    await until(holds_all, "the hosted cache to pull every block")
