"""A private network namespace for multicast tests, and tests that it is one.

Multicast on loopback needs ``lo`` to carry the MULTICAST flag, which hosts usually lack
(``ip link show lo``). As root, a test thread unshares its own network namespace (sockets
made in that thread belong to it; the rest of the process is untouched), brings ``lo`` up
with MULTICAST set, and runs its event loop there. Without root, a host ``lo`` that already
has MULTICAST is used. Otherwise the tests skip and say why.

Other test modules load this file by path (test modules are not a package) and call
:func:`run_isolated`.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
SIOCSIFADDR, SIOCSIFNETMASK = 0x8916, 0x891C
IFF_UP, IFF_MULTICAST = 0x1, 0x1000
_IFREQ_FLAGS = struct.Struct("16sH14x")
_IFREQ_ADDR = struct.Struct("16sH2s4s8x")  # ifreq with a sockaddr_in


def _ifreq_flags(sock: socket.socket, name: str) -> int:
    raw = fcntl.ioctl(sock, SIOCGIFFLAGS, _IFREQ_FLAGS.pack(name.encode(), 0))
    return int(_IFREQ_FLAGS.unpack(raw)[1])


def _lo_up_with_multicast() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = _ifreq_flags(sock, "lo") | IFF_UP | IFF_MULTICAST
        fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ_FLAGS.pack(b"lo", flags))


def add_lo_alias(label: str, address: str, netmask: str) -> None:
    """Give ``lo`` another IPv4 address on its own subnet (``lo:<label>``); namespace only."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        name = f"lo:{label}".encode()
        for request, value in ((SIOCSIFADDR, address), (SIOCSIFNETMASK, netmask)):
            ifreq = _IFREQ_ADDR.pack(name, socket.AF_INET, b"\0\0", socket.inet_aton(value))
            fcntl.ioctl(sock, request, ifreq)


def _host_lo_has_multicast() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return bool(_ifreq_flags(sock, "lo") & IFF_MULTICAST)


def _unshare_net() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"unshare(CLONE_NEWNET): {os.strerror(code)}")


def _in_thread(target: Callable[[], T]) -> T:
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            result.append(target())
        except BaseException as exc:  # handed to the calling thread
            failure.append(exc)

    thread = threading.Thread(target=body, name="netns")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _probe_mode() -> tuple[str, str]:
    """("netns" | "host" | "skip", why)."""
    try:
        _in_thread(_unshare_net)
        return "netns", ""
    except OSError as exc:
        why = f"cannot create a network namespace ({exc})"
    if _host_lo_has_multicast():
        return "host", why
    return "skip", (
        f"multicast on loopback is impossible here: lo has no MULTICAST flag (ip link show lo) "
        f"and {why}; run as root (or in CI) to get a private namespace"
    )


MODE, WHY = _probe_mode()


def run_isolated(
    make: Callable[[], Coroutine[Any, Any, T]], *, aliases: tuple[tuple[str, str, str], ...] = ()
) -> T:
    """Run ``make()`` to completion on a fresh event loop in a private network namespace."""
    if MODE == "skip":
        pytest.skip(WHY)
    if aliases and MODE != "netns":
        pytest.skip(f"extra loopback addresses need a private namespace: {WHY}")

    def body() -> T:
        if MODE == "netns":
            _unshare_net()
            _lo_up_with_multicast()
            for alias in aliases:
                add_lo_alias(*alias)
        return asyncio.run(make())

    return _in_thread(body)


# --- tests of the helper --------------------------------------------------------------------


def test_namespace_has_multicast_loopback_and_host_is_untouched() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        host_flags = _ifreq_flags(sock, "lo")

    async def check() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            return _ifreq_flags(sock, "lo")

    inner = run_isolated(check)
    assert inner & IFF_UP and inner & IFF_MULTICAST
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert _ifreq_flags(sock, "lo") == host_flags


def test_loopback_multicast_reaches_every_member() -> None:
    group, port = "239.255.255.250", 43702

    async def exchange() -> list[tuple[bytes, str]]:
        receivers = []
        for address in ("127.0.0.1", "127.0.0.2"):
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            rx.bind((group, port))
            mreq = socket.inet_aton(group) + socket.inet_aton(address)
            rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            rx.settimeout(5)
            receivers.append(rx)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            tx.bind(("127.0.0.3", 0))
            tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.3"))
            tx.sendto(b"hello", (group, port))
        got = []
        for rx in receivers:
            data, addr = rx.recvfrom(64)
            got.append((data, addr[0]))
            rx.close()
        return got

    assert run_isolated(exchange) == [(b"hello", "127.0.0.3")] * 2


def test_alias_address_is_on_its_own_subnet() -> None:
    async def bind_alias() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("10.77.0.1", 0))
            return str(sock.getsockname()[0])

    assert run_isolated(bind_alias, aliases=(("7", "10.77.0.1", "255.255.255.0"),)) == "10.77.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, pytest.raises(OSError) as err:
        sock.bind(("10.77.0.1", 0))
    assert err.value.errno == errno.EADDRNOTAVAIL
