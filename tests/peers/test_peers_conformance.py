"""What Microsoft's conformance suite asks of a retrieval server, sent byte for byte to a real
daemon in a namespace of the test's own ([MS-PCCRR] 3.2.5; PROTOCOLS.md 2.5)."""

from __future__ import annotations

import http.client
import random
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrc import ContentInformation
from peerdistd.proto.pccrr import Blk, BlkList, BlockRange, CryptoAlgo, GetBlks
from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon
from tests.netns import enter_netns
from tests.peers.test_peers_loopback import publish

T = TypeVar("T")
PEER = ("127.0.0.1", 8080)
PATH = "/116B50EB-ECE2-41ac-8429-9F9E963361B7/"
DATA = random.Random(7).randbytes(5 * BLOCK + 99)


def in_netns(netns: str, work: Callable[[], T]) -> T:
    """``work()`` on a thread moved into ``netns`` (its sockets live there)."""
    out: list[T] = []
    failed: list[BaseException] = []

    def body() -> None:
        try:
            enter_netns(netns)
            out.append(work())
        except BaseException as exc:  # handed to the calling thread
            failed.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return out[0]


def post(netns: str, body: bytes) -> tuple[int, bytes]:
    """One PCCRR exchange (2.1): POST one message, the status and the response body."""

    def exchange() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(*PEER, timeout=10)
        try:
            conn.request("POST", PATH, body)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    return in_netns(netns, exchange)


@pytest.fixture
def node(tmp_path: Path, netns: str) -> Iterator[DaemonProcess]:
    d = start_daemon(
        tmp_path,
        "--listen",
        f"{PEER[0]}:{PEER[1]}",
        netns=netns,
        env={"PEERDISTD_PEERS_ZEROCONF": "false"},
    )
    yield d
    d.stop()
    d.notify.close()


def header(msg_type: int, size: int, crypto: int = 1) -> bytes:
    return struct.pack(">IIII", 0x00000001, msg_type, size, crypto)  # ProtVer 1.0 (2.2.3)


def seg_field(segment_id: bytes) -> bytes:
    return struct.pack(">I", len(segment_id)) + segment_id  # 32 bytes: no padding


async def test_getblklist_with_no_ranges_gets_an_empty_blklist(
    node: DaemonProcess, netns: str
) -> None:
    seg = ContentInformation.parse(await publish(node, DATA)).segments[0].segment_id
    body = seg_field(seg) + struct.pack(">I", 0)  # NeededBlocksRangeCount 0
    status, answer = post(netns, header(2, 16 + len(body), crypto=0) + body)
    assert status == 200
    msg = pccrr.parse_response(answer)
    assert isinstance(msg, BlkList) and msg.segment_id == seg and msg.ranges == ()
    # BlockRangeCount is the u32 right after the segment id.
    assert struct.unpack_from(">I", answer, 4 + 16 + 4 + 32) == (0,)


@pytest.mark.parametrize("case", ["range 0,0", "segment not held", "block not held"])
async def test_getblks_for_nothing_held_gets_size_zero(
    node: DaemonProcess, netns: str, case: str
) -> None:
    seg = ContentInformation.parse(await publish(node, DATA)).segments[0].segment_id
    index, count = {"range 0,0": (0, 0), "segment not held": (2, 1), "block not held": (9, 1)}[case]
    if case == "segment not held":
        seg = bytes(32)
    body = seg_field(seg) + struct.pack(">III", 1, index, count) + struct.pack(">I", 0)
    status, answer = post(netns, header(3, 16 + len(body)) + body)
    assert status == 200
    msg = pccrr.parse_response(answer)
    assert msg == Blk(seg, index, crypto=msg.crypto)  # SizeOfBlock 0, id and index echoed


async def test_getseglist_with_no_ids_is_dropped(node: DaemonProcess, netns: str) -> None:
    await publish(node, DATA)
    body = bytes(range(16)) + struct.pack(">I", 0) + struct.pack(">I", 0)  # no ids, no blob
    raw = struct.pack(">IIII", 0x00000002, 6, 16 + len(body), 0) + body  # ProtVer 2.0
    status, answer = post(netns, raw)
    assert status != 200 and answer == b""


async def test_plaintext_is_served_only_when_allowed(tmp_path: Path, netns: str) -> None:
    for allowed in (False, True):
        d = start_daemon(
            tmp_path / str(allowed),
            "--listen",
            f"{PEER[0]}:{PEER[1]}",
            netns=netns,
            env={
                "PEERDISTD_PEERS_ZEROCONF": "false",
                "PEERDISTD_PEERS_ALLOW_PLAINTEXT": str(allowed).lower(),
            },
        )
        try:
            info = ContentInformation.parse(await publish(d, DATA))
            seg = info.segments[0]
            request = GetBlks(seg.segment_id, (BlockRange(1, 1),), crypto=CryptoAlgo.NONE)
            status, answer = post(netns, pccrr.serialize(request))
            msg = pccrr.parse_response(answer)
            assert status == 200 and isinstance(msg, Blk)
            plain = DATA[BLOCK : 2 * BLOCK]
            if allowed:
                assert msg.crypto == CryptoAlgo.NONE and msg.iv == b"" and msg.block == plain
            else:
                assert msg.crypto == CryptoAlgo.AES_128 and msg.block != plain
                got = blockcrypto.decrypt(msg.crypto, seg.secret, msg.iv, msg.block, BLOCK)
                assert got == plain
        finally:
            d.stop()
            d.notify.close()
