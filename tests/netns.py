"""A private Ethernet segment for tests: one bridge namespace plus N host namespaces.

Each host namespace has one veth (``eth0``) whose peer is a port of ``br0`` in the bridge
namespace, and a ULA address (RFC 4193) from a /64 that no interface or route of this machine
uses. Nothing is ever attached to the machine's own namespace, so multicast (ff02::c for
PCCRD, PROTOCOLS 3.1) stays between the test's namespaces. Cleanup always runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import subprocess
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from tests.harness import netns_unavailable

T = TypeVar("T")

HOST_IFNAME = "eth0"
BRIDGE = "br0"
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True, slots=True)
class Host:
    """One host namespace: its name, its veth's name and index, its ULA and link-local."""

    netns: str
    ifname: str
    ifindex: int
    address: ipaddress.IPv6Address
    link_local: ipaddress.IPv6Address

    def endpoint(self, port: int) -> str:
        """``[addr]:port``, as PCCRD XAddrs and ``--listen`` write IPv6 endpoints."""
        return f"[{self.address}]:{port}"


@dataclass(frozen=True, slots=True)
class BridgedLan:
    """The bridge namespace, the /64 the hosts share and the hosts in order."""

    bridge_netns: str
    network: ipaddress.IPv6Network
    hosts: tuple[Host, ...]


# ip-route(8) types that come before the prefix on a line of ``ip route show``.
ROUTE_TYPES = frozenset(
    [
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "unreachable",
        "blackhole",
        "prohibit",
        "throw",
        "nat",
    ]
)


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def used_ipv6_networks() -> list[ipaddress.IPv6Network]:
    """Every IPv6 prefix this machine's namespace has on an interface or in a route."""
    found: list[ipaddress.IPv6Network] = []
    for line in _ip("-6", "-o", "addr", "show").splitlines():
        fields = line.split()
        if "inet6" in fields:
            found.append(ipaddress.IPv6Network(fields[fields.index("inet6") + 1], strict=False))
    for line in _ip("-6", "route", "show", "table", "all").splitlines():
        words = line.split()
        if words and words[0] in ROUTE_TYPES:  # "unreachable fd12::/64 ...": a typed route
            words = words[1:]
        dest = words[0] if words else "default"
        with contextlib.suppress(ValueError):  # "default" and other non-prefixes
            found.append(ipaddress.IPv6Network(dest, strict=False))
    return found


def unused_ula_network(used: Sequence[ipaddress.IPv6Network]) -> ipaddress.IPv6Network:
    """A random ``fdXX:XXXX:XXXX:YYYY::/64`` (RFC 4193 3.2) overlapping none of ``used``."""
    for _ in range(64):
        prefix = bytes([0xFD]) + secrets.token_bytes(7) + bytes(8)
        network = ipaddress.IPv6Network((prefix, 64))
        # A default-like route (::/0) overlaps everything but claims no addresses of its own.
        if not any(network.overlaps(u) for u in used if u.prefixlen > 0):
            return network
    raise RuntimeError("found no unused ULA /64")


def _delete(names: Sequence[str]) -> None:
    for name in reversed(names):
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def _setup_bridge(name: str) -> None:
    # No MLD snooping: with no querier on the segment, every multicast reaches every port.
    _ip("-n", name, "link", "add", BRIDGE, "type", "bridge", "mcast_snooping", "0")
    _ip("-n", name, "link", "set", BRIDGE, "addrgenmode", "none")
    _ip("-n", name, "link", "set", BRIDGE, "up")


def _setup_host(name: str, bridge_netns: str, port: str, address: str, link_local: str) -> int:
    _ip("-n", name, "link", "set", "lo", "up")
    # Created inside the host namespace with its peer straight in the bridge namespace, so
    # neither end ever appears in this machine's own namespace.
    _ip("-n", name, "link", "add", HOST_IFNAME, "type", "veth", "peer", port, "netns", bridge_netns)
    _ip("-n", bridge_netns, "link", "set", port, "master", BRIDGE, "up")
    # Our own link-local address (fe80::N) instead of a generated one that would sit in
    # duplicate address detection for a second or two; ``nodad`` for the same reason.
    _ip("-n", name, "link", "set", HOST_IFNAME, "addrgenmode", "none")
    _ip("-n", name, "addr", "add", link_local, "dev", HOST_IFNAME, "nodad")
    _ip("-n", name, "addr", "add", address, "dev", HOST_IFNAME, "nodad")
    _ip("-n", name, "link", "set", HOST_IFNAME, "up")
    (link,) = json.loads(_ip("-n", name, "-j", "link", "show", HOST_IFNAME))
    return int(link["ifindex"])


@contextlib.contextmanager
def bridged_lan(count: int) -> Iterator[BridgedLan]:
    """Make ``count`` host namespaces on one bridge; delete every namespace on exit."""
    tag = f"pd6{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
    network = unused_ula_network(used_ipv6_networks())
    bridge_netns = f"{tag}-br"
    made: list[str] = []
    try:
        _ip("netns", "add", bridge_netns)
        made.append(bridge_netns)
        _setup_bridge(bridge_netns)
        hosts = []
        for i in range(1, count + 1):
            name = f"{tag}-h{i}"
            _ip("netns", "add", name)
            made.append(name)
            address = network[i]
            link_local = ipaddress.IPv6Address(f"fe80::{i:x}")
            index = _setup_host(
                name, bridge_netns, f"p{i}", f"{address}/{network.prefixlen}", f"{link_local}/64"
            )
            hosts.append(Host(name, HOST_IFNAME, index, address, link_local))
        yield BridgedLan(bridge_netns, network, tuple(hosts))
    finally:
        _delete(made)


@pytest.fixture
def lan3() -> Iterator[BridgedLan]:
    """Three host namespaces on one bridge (skips when namespaces cannot be made here)."""
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    with bridged_lan(3) as lan:
        yield lan


def enter_netns(name: str) -> None:
    """Move the calling thread into namespace ``name``: sockets it makes from now on live there.

    Only the thread moves (setns(2)); a socket keeps its namespace wherever it is used later.
    """
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({name}): {os.strerror(code)}")
    finally:
        os.close(fd)


def run_in_thread(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` on a fresh event loop in a thread of its own (free to :func:`enter_netns`)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:  # handed to the calling thread
            failure.append(exc)

    thread = threading.Thread(target=body, name="netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
