"""IPv6 discovery between real daemons, one per network namespace, on one bridge (issue #4).

Loopback does not carry IPv6 multicast, so each node gets a namespace with a veth into a
bridge namespace, a ULA and a link-local address; discovery joins ff02::c on that veth by
index (PROTOCOLS 3.1) and answers carry ``[addr]:port`` XAddrs (3.4).
"""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from peerdistd.net.discovery import Discovery, DiscoveryEvent, PeerHit
from tests.content import BLOCK
from tests.harness import DaemonProcess, netns_unavailable, start_daemon
from tests.netns import (
    BridgedLan,
    Host,
    bridged_lan,
    enter_netns,
    lan3,
    run_in_thread,
    used_ipv6_networks,
)
from tests.peers.test_peers_loopback import counters, publish, read_all

__all__ = ["lan3"]  # a fixture: imported so that pytest finds it here

SIZE = 48 * BLOCK + 1234
PORT = 8080
S1, S2, S3 = (bytes([n]) * 32 for n in (0x11, 0x22, 0x33))


@contextlib.contextmanager
def ipv6_nodes(
    tmp_path: Path, lan: BridgedLan, listen: Callable[[Host], str]
) -> Iterator[list[DaemonProcess]]:
    """One daemon per host of ``lan``, peers listening on ``listen(host)``, zeroconf off."""
    started: list[DaemonProcess] = []
    try:
        for i, host in enumerate(lan.hosts, 1):
            started.append(
                start_daemon(
                    tmp_path,
                    "--listen",
                    listen(host),
                    name=f"node{i}",
                    netns=host.netns,
                    env={"PEERDISTD_PEERS_ZEROCONF": "false"},
                )
            )
        yield started
    finally:
        for d in started:
            d.stop()
            d.notify.close()


async def status(d: DaemonProcess) -> dict[str, Any]:
    async with d.session() as api, api.get("/v1/status") as r:
        return dict(await r.json())


async def test_three_daemons_share_content_over_ipv6(tmp_path: Path, lan3: BridgedLan) -> None:
    a_host, b_host, _ = lan3.hosts
    data = random.Random(61).randbytes(SIZE)
    with ipv6_nodes(tmp_path, lan3, lambda h: h.endpoint(PORT)) as (a, b, c):
        assert (await status(a))["listen"]["peers"] == f"[{a_host.address}]:{PORT}"
        ci = await publish(a, data)
        assert await read_all(b, ci, timeout_ms=5000) == data
        got_b = await counters(b)
        assert got_b["bytes_from_peers"] == SIZE and got_b["bytes_from_origin"] == 0
        assert got_b["probes_sent"] >= 1 and got_b["matches_received"] >= 1
        served_a = (await counters(a))["bytes_served_to_peers"]
        assert served_a >= SIZE
        assert await read_all(c, ci, timeout_ms=5000) == data
        got_c = await counters(c)
        assert got_c["bytes_from_peers"] == SIZE and got_c["bytes_from_origin"] == 0
        served_a2 = (await counters(a))["bytes_served_to_peers"] - served_a
        served_b = (await counters(b))["bytes_served_to_peers"]
        assert served_a2 > 0 and served_b > 0  # C took blocks from both A and B
        assert served_a2 + served_b >= SIZE
        assert (await status(b))["listen"]["peers"] == f"[{b_host.address}]:{PORT}"


async def test_wildcard_listener_advertises_its_ula(tmp_path: Path, lan3: BridgedLan) -> None:
    # Listening on [::] (IPv6 only: asyncio sets IPV6_V6ONLY), a node advertises its ULA, not
    # loopback, link-local or an IPv4 address its listener cannot take.
    data = random.Random(62).randbytes(8 * BLOCK)
    with ipv6_nodes(tmp_path, lan3, lambda h: f"[::]:{PORT}") as (a, b, _):
        for node, host in zip((a, b), lan3.hosts, strict=False):
            assert (await status(node))["listen"]["peers"] == f"[{host.address}]:{PORT}"
        ci = await publish(a, data)
        assert await read_all(b, ci, timeout_ms=5000) == data
        got_b = await counters(b)
        assert got_b["bytes_from_peers"] == len(data) and got_b["bytes_from_origin"] == 0
        assert (await counters(a))["bytes_served_to_peers"] == len(data)


class Held:
    """The block counts a node holds, as Discovery's SegmentDirectory."""

    def __init__(self, held: dict[bytes, int]) -> None:
        self.held = held

    def block_counts(self, segment_ids: Sequence[bytes]) -> dict[bytes, int]:
        return {s: self.held[s] for s in segment_ids if s in self.held}


@dataclass(frozen=True, slots=True)
class Found:
    hits: dict[bytes, set[PeerHit]]
    events: list[list[DiscoveryEvent]]
    probe_source: tuple[Any, ...]
    interface: tuple[int, str]
    probes_sent: int
    matches_received: int


def discover(lan: BridgedLan, interface: Callable[[Host], str]) -> Found:
    """A holds S1, B holds S1 and S2, C asks for S1, S2 and S3, each in its own namespace."""
    held: tuple[dict[bytes, int], ...] = ({S1: 3}, {S1: 5, S2: 2}, {})

    async def run() -> Found:
        events: list[list[DiscoveryEvent]] = [[] for _ in lan.hosts]
        async with contextlib.AsyncExitStack() as stack:
            nodes = []
            for host, blocks, log in zip(lan.hosts, held, events, strict=True):
                enter_netns(host.netns)  # the Discovery's sockets are made in this namespace
                discovery = Discovery(
                    Held(blocks),
                    interface_addresses=[interface(host)],
                    advertise=host.endpoint(PORT),
                    on_event=log.append,
                )
                nodes.append(await stack.enter_async_context(discovery))
            c = nodes[2]
            found = await c.find([S1, S2, S3], window=0.3)
            (iface,) = c.interfaces
            return Found(
                {sid: set(hits) for sid, hits in found.items()},
                events,
                c.unicast_addresses[0],
                (iface.index, iface.name),
                c.stats.probes_sent,
                c.stats.matches_received,
            )

    return run_in_thread(run)


def expected_hits(lan: BridgedLan) -> dict[bytes, set[PeerHit]]:
    a, b, _ = (h.endpoint(PORT) for h in lan.hosts)
    return {S1: {PeerHit(a, 3), PeerHit(b, 5)}, S2: {PeerHit(b, 2)}, S3: set()}


def test_discovery_finds_holders_over_ff02_c(lan3: BridgedLan) -> None:
    found = discover(lan3, lambda h: str(h.address))
    assert found.hits == expected_hits(lan3)
    c = lan3.hosts[2]
    assert found.interface == (c.ifindex, c.ifname)
    assert (found.probes_sent, found.matches_received) == (1, 2)
    host, port = found.probe_source[:2]
    assert host == str(c.address)  # probes leave from the interface's own socket
    prober = f"[{c.address}]:{port}"
    for answered in found.events[:2]:  # A and B each answered C's probe, unicast to its port
        assert [(e.kind, e.peer) for e in answered] == [
            ("probe_received", prober),
            ("probe_answered", prober),
        ]


def test_discovery_on_link_local_addresses(lan3: BridgedLan) -> None:
    # Scoped addresses (fe80::N%eth0): the probe comes from C's link-local address and the
    # answers go back to it by scope; the XAddrs still carry each node's advertised ULA.
    found = discover(lan3, lambda h: f"{h.link_local}%{h.ifname}")
    assert found.hits == expected_hits(lan3)
    c = lan3.hosts[2]
    assert found.interface == (c.ifindex, c.ifname)
    prober = f"[{c.link_local}%{c.ifname}]:{found.probe_source[1]}"
    for answered in found.events[:2]:
        assert [(e.kind, e.peer) for e in answered] == [
            ("probe_received", prober),
            ("probe_answered", prober),
        ]


def test_answer_leaves_by_the_link_of_the_probe(lan3: BridgedLan) -> None:
    # A has link-local addresses on two links; the answer to C must come from A's address on
    # eth0, where the probe came in, not from the first interface on fe80::/64: the kernel
    # names a source's link only by index (sin6_scope_id).
    a, _, c = lan3.hosts
    other = "fe80::99"
    for args in (  # the second link: a veth pair of A's own
        ("link", "add", "side0", "type", "veth", "peer", "side1"),
        ("link", "set", "side0", "addrgenmode", "none"),
        ("link", "set", "side1", "addrgenmode", "none"),
        ("addr", "add", f"{other}/64", "dev", "side0", "nodad"),
        ("link", "set", "side1", "up"),
        ("link", "set", "side0", "up"),
    ):
        subprocess.run(["ip", "-n", a.netns, *args], check=True, capture_output=True)
    events: list[DiscoveryEvent] = []

    async def run() -> dict[bytes, list[PeerHit]]:
        async with contextlib.AsyncExitStack() as stack:
            enter_netns(a.netns)
            da = Discovery(
                Held({S1: 3}),
                interface_addresses=[f"{other}%side0", f"{a.link_local}%eth0"],
                advertise=a.endpoint(PORT),
            )
            await stack.enter_async_context(da)
            enter_netns(c.netns)
            dc = Discovery(
                Held({}),
                interface_addresses=[f"{c.link_local}%eth0"],
                advertise=c.endpoint(PORT),
                on_event=events.append,
            )
            await stack.enter_async_context(dc)
            return await dc.find([S1], window=0.3)

    assert run_in_thread(run) == {S1: [PeerHit(a.endpoint(PORT), 3)]}
    (answer,) = (e for e in events if e.kind == "match_received")
    assert answer.peer.startswith(f"[{a.link_local}%eth0]:")


def test_lan_is_private_and_removed_even_on_failure() -> None:
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    own_links = _ip_json("link", "show")
    used = used_ipv6_networks()
    with pytest.raises(RuntimeError, match="boom"), bridged_lan(2) as lan:
        names = {lan.bridge_netns, *(h.netns for h in lan.hosts)}
        assert names <= set(_ip_lines("netns", "list"))
        assert not any(lan.network.overlaps(u) for u in used)
        assert [h.address for h in lan.hosts] == [lan.network[1], lan.network[2]]
        assert _ip_json("link", "show") == own_links  # nothing was added to our namespace
        raise RuntimeError("boom")
    assert not names & set(_ip_lines("netns", "list"))


def _ip_lines(*args: str) -> list[str]:
    out = subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ip_json(*args: str) -> list[tuple[str, int]]:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return sorted((link["ifname"], link["ifindex"]) for link in json.loads(out))
