"""IPv6 discovery on a link that becomes usable after the daemon started (issue 11, item 10).

An IPv6 address is *tentative* while its link is down and during duplicate address detection
once it is up (RFC 4862 5.4): binding it fails with EADDRNOTAVAIL. A daemon started then must
join ff02::c (PROTOCOLS 3.1) when the kernel says the address is usable, not never.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from peerdistd.net.discovery import Discovery, PeerHit
from tests.content import BLOCK
from tests.harness import DaemonProcess, netns_unavailable, start_daemon
from tests.netns import BridgedLan, Host, bridged_lan, enter_netns, run_in_thread
from tests.peers.test_peers_loopback import counters, publish, read_all

PORT = 8080
JOIN_TIMEOUT = 30.0  # DAD takes about a second (one probe, RetransTimer 1 s)


def ip(host: Host, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", host.netns, *args], check=True, capture_output=True, text=True
    ).stdout


def tentative_link(host: Host, network_prefixlen: int) -> None:
    """``host``'s link down, its addresses added again with DAD on: tentative until it is up."""
    ip(host, "link", "set", host.ifname, "down")
    ip(host, "addr", "flush", "dev", host.ifname)
    ip(host, "addr", "add", f"{host.link_local}/64", "dev", host.ifname)
    ip(host, "addr", "add", f"{host.address}/{network_prefixlen}", "dev", host.ifname)
    shown = ip(host, "-6", "addr", "show", "dev", host.ifname)
    assert shown.count("tentative") == 2, shown


@pytest.fixture
def lan2() -> Iterator[BridgedLan]:
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    with bridged_lan(2) as lan:
        yield lan


@contextlib.contextmanager
def node(tmp_path: Path, host: Host, listen: str, name: str) -> Iterator[DaemonProcess]:
    d = start_daemon(
        tmp_path,
        "--listen",
        listen,
        name=name,
        netns=host.netns,
        env={"PEERDISTD_PEERS_ZEROCONF": "false"},
    )
    try:
        yield d
    finally:
        d.stop()
        d.notify.close()


async def wait_for_log(d: DaemonProcess, text: str) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while text not in d.output():
        assert d.proc.poll() is None, d.output()
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{d.output()}"
        await asyncio.sleep(0.05)  # polling the observable, not waiting a set time


def usable_side_link(host: Host) -> None:
    """A second link on ``host`` (a veth pair of its own) with a usable link-local address."""
    for args in (
        ("link", "add", "side0", "type", "veth", "peer", "side1"),
        ("link", "set", "side0", "addrgenmode", "none"),
        ("link", "set", "side1", "addrgenmode", "none"),
        ("addr", "add", "fe80::99/64", "dev", "side0", "nodad"),
        ("link", "set", "side1", "up"),
        ("link", "set", "side0", "up"),
    ):
        ip(host, *args)


# Without another link the daemon used to refuse to start; with one, it started and never
# joined the link that became usable later.
@pytest.mark.parametrize("other_link", [False, True], ids=["only_link", "with_other_link"])
async def test_discovery_joins_when_a_tentative_address_becomes_usable(
    tmp_path: Path, lan2: BridgedLan, other_link: bool
) -> None:
    a_host, b_host = lan2.hosts
    if other_link:
        usable_side_link(b_host)
    tentative_link(b_host, lan2.network.prefixlen)
    from_a = random.Random(71).randbytes(8 * BLOCK + 99)
    from_b = random.Random(72).randbytes(8 * BLOCK + 77)
    with (
        node(tmp_path, a_host, a_host.endpoint(PORT), "a") as a,
        node(tmp_path, b_host, f"[::]:{PORT}", "b") as b,
    ):
        assert "discovery skips eth0" in b.output()  # started while nothing could be bound
        ip(b_host, "link", "set", b_host.ifname, "up")
        await wait_for_log(b, f"discovery joined eth0 ({b_host.address})")
        await wait_for_log(b, f"discovery joined eth0 ({b_host.link_local}%eth0)")
        # B probes from its link now...
        ci = await publish(a, from_a)
        assert await read_all(b, ci) == from_a, b.output() + a.output()
        got = await counters(b)
        assert (got["bytes_from_peers"], got["bytes_from_origin"]) == (len(from_a), 0)
        # ...and hears A's probes on ff02::c, answering them.
        ci = await publish(b, from_b)
        assert await read_all(a, ci) == from_b, a.output() + b.output()
        got = await counters(a)
        assert (got["bytes_from_peers"], got["bytes_from_origin"]) == (len(from_b), 0)


class Held:
    def __init__(self, held: dict[bytes, int]) -> None:
        self.held = held

    def block_counts(self, segment_ids: Sequence[bytes]) -> dict[bytes, int]:
        return {s: self.held[s] for s in segment_ids if s in self.held}


async def until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.02)  # polling the observable, not waiting a set time


def test_an_address_that_goes_and_comes_back_is_left_and_joined_again(lan2: BridgedLan) -> None:
    a_host, b_host = lan2.hosts
    segment = bytes(32)
    ula = str(b_host.address)

    async def run() -> list[PeerHit]:
        async with contextlib.AsyncExitStack() as stack:
            enter_netns(a_host.netns)
            a = Discovery(Held({}), interface_addresses=None, advertise=a_host.endpoint(PORT))
            await stack.enter_async_context(a)
            enter_netns(b_host.netns)
            b = Discovery(Held({segment: 4}), interface_addresses=None, advertise="[::1]:1")
            await stack.enter_async_context(b)
            held = {i.host for i in b.interfaces}
            assert ula in held
            ip(b_host, "addr", "del", f"{ula}/{lan2.network.prefixlen}", "dev", b_host.ifname)
            ip(b_host, "addr", "del", f"{b_host.link_local}/64", "dev", b_host.ifname)
            # Every address of eth0 gone: B leaves it (and, as at start-up with no LAN address,
            # runs discovery on loopback).
            await until(lambda: all(i.name != b_host.ifname for i in b.interfaces))
            assert (await a.find([segment], window=0.3))[segment] == []
            ip(b_host, "addr", "add", f"{ula}/{lan2.network.prefixlen}", "dev", "eth0", "nodad")
            await until(lambda: [i.host for i in b.interfaces] == [ula])  # and loopback left
            a.forget([segment])
            return (await a.find([segment], window=0.3))[segment]

    assert run_in_thread(run) == [PeerHit("[::1]:1", 4)]
