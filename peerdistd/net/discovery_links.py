"""The sockets of PCCRD discovery, per interface address, opened and closed as links change.

Each interface address gets a unicast socket (probes and answers leave from it); each address
family gets one listener on the group's port, joined to the group once per interface (3.1);
one unicast socket per interface and family sends the probes, so each goes out once: that
of the link's first usable address in the order the interfaces are listed, whenever each
became usable. When an address goes, the link's next one sends; the last one leaves the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping

from peerdistd.errors import ConfigError
from peerdistd.net.discovery_sockets import (
    NetInterface,
    join_group,
    leave_group,
    listener_socket,
    unicast_socket,
)
from peerdistd.proto.pccrd_responder import Address

log = logging.getLogger(__name__)

Transport = asyncio.DatagramTransport


class Endpoint(asyncio.DatagramProtocol):
    """Hands datagrams (with the interface of a unicast socket, None for a listener) on."""

    def __init__(
        self,
        via: NetInterface | None,
        on_datagram: Callable[[bytes, Address, NetInterface | None], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._via, self._on_datagram, self._on_error = via, on_datagram, on_error
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._on_datagram(data, addr, self._via)

    def error_received(self, exc: Exception) -> None:
        self._on_error(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Links:
    """The open sockets; ``strict``: an address asked for by name must open at start."""

    def __init__(
        self,
        groups: Mapping[socket.AddressFamily, str],
        port: int,
        *,
        strict: bool,
        on_datagram: Callable[[bytes, Address, NetInterface | None], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self.groups, self.port, self.strict = groups, port, strict
        self._on_datagram, self._on_error = on_datagram, on_error
        self.unicast: dict[str, tuple[NetInterface, Transport]] = {}
        self.senders: list[tuple[NetInterface, Transport]] = []
        self._endpoints: list[tuple[Transport, Endpoint]] = []
        self._listeners: dict[socket.AddressFamily, Transport] = {}
        self._joined: set[tuple[socket.AddressFamily, int]] = set()
        self._order: dict[str, int] = {}  # the interfaces' order, for picking the senders

    async def update(self, now: list[NetInterface]) -> None:
        """Open the addresses of ``now`` not open yet; close those no longer there."""
        current = {i.local.address: i for i in now}
        self._order = {address: n for n, address in enumerate(current)}
        for address, (iface, _) in list(self.unicast.items()):
            if current.get(address) != iface:
                log.info("discovery leaves %s (%s)", iface.name, address)
                self.close(address)
        for address, iface in current.items():
            if address not in self.unicast and await self.open(iface, at_start=False):
                log.info("discovery joined %s (%s)", iface.name, address)

    async def open(self, iface: NetInterface, *, at_start: bool) -> bool:
        """Open ``iface``'s socket (and join its group); False if it cannot be, for now."""
        group = self.groups[iface.family]
        transport = None
        try:
            transport = await self._endpoint(unicast_socket(iface, group), iface)
            self.unicast[iface.local.address] = (iface, transport)
            if (iface.family, iface.index) in self._joined:
                return True  # one membership and one copy of each probe per interface and family
            listener = self._listeners.get(iface.family)
            if listener is None:
                lsock = listener_socket(iface.family, group, self.port)
                listener = self._listeners[iface.family] = await self._endpoint(lsock, None)
            join_group(listener.get_extra_info("socket"), iface, group)
            self._joined.add((iface.family, iface.index))
        except OSError as exc:
            if transport is not None:
                self.close(iface.local.address)
            if at_start and self.strict:
                raise ConfigError("peers.interfaces", f"{iface.local.address}: {exc}") from exc
            # A tentative IPv6 address (EADDRNOTAVAIL, RFC 4862 5.4) is tried again when the
            # kernel reports a change (discovery_watch).
            log.log(
                logging.WARNING if at_start else logging.DEBUG,
                "discovery skips %s (%s) for now: %s",
                iface.name,
                iface.local.address,
                exc,
            )
            return False
        finally:
            self._pick_senders()
        return True

    def close(self, address: str) -> None:
        """Close one address's socket; its link leaves the group with its last address."""
        iface, transport = self.unicast.pop(address)
        transport.close()
        self._endpoints = [(t, ep) for t, ep in self._endpoints if t is not transport]
        self._pick_senders()
        key = (iface.family, iface.index)
        if key in self._joined and not any((i.family, i.index) == key for i, _ in self.senders):
            self._joined.discard(key)
            listener = self._listeners.get(iface.family)
            with contextlib.suppress(OSError):  # ENODEV: the interface itself is gone
                if listener is not None:
                    leave_group(listener.get_extra_info("socket"), iface, self.groups[iface.family])

    def _pick_senders(self) -> None:
        first: dict[tuple[socket.AddressFamily, int], tuple[NetInterface, Transport]] = {}
        last = len(self._order)
        for address in sorted(self.unicast, key=lambda a: self._order.get(a, last)):
            iface, transport = self.unicast[address]
            if (iface.family, iface.index) in self._joined:
                first.setdefault((iface.family, iface.index), (iface, transport))
        self.senders = list(first.values())

    async def aclose(self) -> None:
        for transport, _ in self._endpoints:
            transport.close()
        await asyncio.gather(*(ep.closed for _, ep in self._endpoints))
        self._endpoints.clear()
        self.unicast.clear()
        self.senders.clear()
        self._listeners.clear()
        self._joined.clear()

    async def _endpoint(self, sock: socket.socket, via: NetInterface | None) -> Transport:
        try:
            transport, endpoint = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: Endpoint(via, self._on_datagram, self._on_error), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        self._endpoints.append((transport, endpoint))
        return transport
