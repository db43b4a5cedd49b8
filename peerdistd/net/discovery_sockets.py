"""Interfaces and multicast sockets for PCCRD discovery (Linux socket options).

Each interface gets a unicast socket bound to its address (probes and answers go out of it,
answers to our probes come back to it); each address family gets one listener bound to the
multicast group and port, shared with other daemons on the machine through SO_REUSEPORT.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import ifaddr

from peerdistd.errors import ConfigError
from peerdistd.proto.pccrd_responder import LocalInterface

# Linux values; Python's socket module does not name them. With MULTICAST_ALL off a socket
# gets only the groups it joined itself, on the interfaces it joined them on (ip(7), ipv6(7)).
IP_MULTICAST_ALL = 49
IPV6_MULTICAST_ALL = 29
_MREQN = struct.Struct("=4s4si")  # struct ip_mreqn: group, local address, ifindex
_MREQ6 = struct.Struct("=16sI")  # struct ipv6_mreq: group, ifindex


@dataclass(frozen=True, slots=True)
class NetInterface:
    """A local address to run discovery on, with its subnet and interface."""

    local: LocalInterface
    index: int
    name: str

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if self.local.network.version == 6 else socket.AF_INET

    @property
    def host(self) -> str:
        return self.local.address.partition("%")[0]


def resolve_interfaces(
    addresses: Sequence[str] | None, *, missing_ok: bool = False
) -> list[NetInterface]:
    """The interfaces of ``addresses`` (each must be on one, unless ``missing_ok``: one gone
    for now is left out), or every address of every one."""
    known: list[NetInterface] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            host = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            addr = ipaddress.ip_address(host)
            scoped = f"{host}%{adapter.name}" if addr.is_link_local and addr.version == 6 else host
            local = LocalInterface.of(scoped, ip.network_prefix)
            known.append(NetInterface(local, adapter.index or 0, adapter.name))
    if addresses is None:
        # Every interface: loopback only if there is nothing else (it rarely carries
        # multicast, and no peer is ever there on a real LAN).
        lan = [k for k in known if not ipaddress.ip_address(k.host).is_loopback]
        return lan or known
    found = []
    for address in dict.fromkeys(addresses):
        try:
            found.append(_interface_of(address, known))
        except ConfigError:
            if not missing_ok:
                raise
    return found


def _interface_of(address: str, known: list[NetInterface]) -> NetInterface:
    host, _, scope = address.partition("%")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError("peers.interfaces", f"{address!r} is not an IP address") from exc
    candidates = [k for k in known if addr in k.local.network and scope in ("", k.name)]
    exact = [k for k in candidates if ipaddress.ip_address(k.host) == addr]
    # An address of a local route (127.0.0.2 on lo's 127.0.0.0/8) uses that interface.
    for k in exact or candidates:
        name = f"{host}%{k.name}" if "%" in k.local.address else host
        return NetInterface(LocalInterface(name, k.local.network), k.index, k.name)
    raise ConfigError("peers.interfaces", f"{address} is on no local interface")


def unicast_socket(iface: NetInterface, group: str) -> socket.socket:
    """Bound to the interface address (ephemeral port); multicast goes out of that interface."""
    sock = socket.socket(iface.family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        if iface.family == socket.AF_INET:
            sock.bind((iface.host, 0))
            mreq = _MREQN.pack(socket.inet_aton(group), socket.inet_aton(iface.host), iface.index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreq)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            # 3.1: discovery stays on the local subnet.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        else:
            sock.bind((iface.host, 0, 0, iface.index))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, iface.index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
    except OSError:
        sock.close()
        raise
    return sock


def listener_socket(family: socket.AddressFamily, group: str, port: int) -> socket.socket:
    """Bound to ``group:port``, shareable by several daemons (SO_REUSEADDR/SO_REUSEPORT)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            sock.bind((group, port))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_ALL, 0)
            sock.bind(("::", port))
    except OSError:
        sock.close()
        raise
    return sock


def join_group(sock: socket.socket, iface: NetInterface, group: str) -> None:
    """Join ``group`` on ``iface`` (IP_ADD_MEMBERSHIP / IPV6_JOIN_GROUP by interface index)."""
    if iface.family == socket.AF_INET:
        mreq = _MREQN.pack(socket.inet_aton(group), socket.inet_aton(iface.host), iface.index)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    else:
        mreq6 = _MREQ6.pack(socket.inet_pton(socket.AF_INET6, group), iface.index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq6)


def leave_group(sock: socket.socket, iface: NetInterface, group: str) -> None:
    """Undo :func:`join_group` (IP_DROP_MEMBERSHIP / IPV6_LEAVE_GROUP)."""
    if iface.family == socket.AF_INET:
        mreq = _MREQN.pack(socket.inet_aton(group), socket.inet_aton(iface.host), iface.index)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_DROP_MEMBERSHIP, mreq)
    else:
        mreq6 = _MREQ6.pack(socket.inet_pton(socket.AF_INET6, group), iface.index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_LEAVE_GROUP, mreq6)
