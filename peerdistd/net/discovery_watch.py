"""Tell discovery when the machine's addresses or links change, so it can (re)join.

An IPv6 address stays *tentative* during duplicate address detection (RFC 4862 5.4) and
cannot be bound until it ends, about a second after its link comes up; links and addresses
also come and go (a VPN, a cable, DHCP). The kernel announces each change on the rtnetlink
multicast groups (rtnetlink(7): RTM_NEWADDR when a tentative address becomes usable), so
discovery re-checks its interfaces then, and every ``interval`` seconds in case netlink
cannot be opened. Messages are not parsed: any change is worth one cheap re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

# rtnetlink(7) multicast groups (the legacy bit masks of <linux/rtnetlink.h>).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR


class AddressWatch:
    """Runs ``on_change`` after each burst of rtnetlink news, and every ``interval`` seconds."""

    def __init__(self, on_change: Callable[[], Awaitable[None]], *, interval: float = 30.0) -> None:
        self._on_change = on_change
        self._interval = interval
        self._changed = asyncio.Event()
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        except OSError as exc:  # no AF_NETLINK (a sandbox): the periodic re-check remains
            log.debug("no rtnetlink (%s): re-checking interfaces every %g s", exc, self._interval)
        else:
            sock.setblocking(False)
            sock.bind((0, GROUPS))
            loop.add_reader(sock.fileno(), self._readable)
            self._sock = sock
        self._task = loop.create_task(self._run())

    async def aclose(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                self._sock.recv(65536)
            except BlockingIOError:
                return
            except OSError:  # ENOBUFS: news were lost, which is news enough
                self._changed.set()
                return
            self._changed.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._interval)
            self._changed.clear()
            try:
                await self._on_change()
            except Exception:  # a failed re-check must not end the watch
                log.exception("re-checking the discovery interfaces failed")
