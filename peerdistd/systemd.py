"""systemd integration without libsystemd: sd_notify(3), the watchdog and sd_listen_fds(3).

Everything here is a no-op outside systemd, so the daemon calls it unconditionally.
"""

from __future__ import annotations

import asyncio
import fcntl
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Mapping
from types import TracebackType

from peerdistd.errors import ConfigError

LOG = logging.getLogger(__name__)

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed descriptors start at 3


class Notifier:
    """Sends sd_notify(3) state lines to ``$NOTIFY_SOCKET`` (a path or an abstract ``@name``)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._env = env
        self._address: str | None = None
        self._sock: socket.socket | None = None
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("/"):
            self._address = address
        elif address.startswith("@") and len(address) > 1:
            self._address = "\0" + address[1:]  # Linux abstract namespace
        elif address:
            LOG.warning("NOTIFY_SOCKET=%r is not supported; not notifying systemd", address)
        if self._address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False if not sent (never raises)."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self._address)
        except OSError as exc:
            # Losing a notification must not take the daemon down; systemd's timeouts act.
            LOG.warning("cannot notify systemd at %r: %s", self._address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # systemd.service(5), Type=notify-reload: RELOADING=1 must carry MONOTONIC_USEC.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text.replace(chr(10), ' ')}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    async def keep_alive(self, interval: float | None = None) -> None:
        """Ping the watchdog every ``interval`` (default: half the timeout) until cancelled."""
        interval = watchdog_interval(self._env) if interval is None else interval
        if interval is None or not self.enabled:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), or None if not watched."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = int(env.get("WATCHDOG_PID", str(os.getpid())))
    except ValueError:
        return None
    # sd_watchdog_enabled(3): WATCHDOG_PID names the process meant; ping at half the timeout.
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2_000_000


def listen_fds(env: Mapping[str, str] | None = None, unset: bool = True) -> list[socket.socket]:
    """Sockets passed by socket activation (sd_listen_fds(3)), in order; [] if none."""
    return [sock for _, sock in named_listen_fds(env, unset)]


def named_listen_fds(
    env: Mapping[str, str] | None = None, unset: bool = True
) -> list[tuple[str, socket.socket]]:
    """Like :func:`listen_fds`, each with its ``FileDescriptorName=`` ("unknown" if unnamed).

    ``unset`` removes the LISTEN_* variables from ``os.environ`` (when ``env`` is None) so
    that child processes do not take the descriptors for theirs.
    """
    source = os.environ if env is None else env
    pid, count, names = (source.get(k, "") for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if unset and env is None:
        for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(key, None)
    try:
        if int(pid) != os.getpid():
            return []
        n = int(count)
    except ValueError:
        return []
    labels = names.split(":") if names else []
    if len(labels) != n:
        labels = ["unknown"] * n
    result: list[tuple[str, socket.socket]] = []
    for fd, label in zip(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n), labels, strict=True):
        try:
            # sd_listen_fds(3) sets FD_CLOEXEC on every passed descriptor; so do we.
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
            result.append((label, socket.socket(fileno=fd)))
        except OSError as exc:
            for _, sock in result:
                sock.detach()
            raise ConfigError("LISTEN_FDS", f"descriptor {fd} is not a socket: {exc}") from exc
    return result


def check_local(sock: socket.socket) -> None:
    """Refuse an inherited API socket that is not a Unix socket or loopback TCP.

    The API is never served on a network (as ``daemon.api_tcp`` must be loopback): a socket
    unit that says ``ListenStream=0.0.0.0:9600`` is a configuration error, and the daemon
    refuses to start rather than serve (or silently drop) it.
    """
    if sock.family == socket.AF_UNIX:
        return
    where = f"fd {sock.fileno()}"
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host = str(sock.getsockname()[0])
        where = f"{host}:{sock.getsockname()[1]}"
        address = ipaddress.ip_address(host.split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback:
            return
    raise ConfigError(
        "LISTEN_FDS",
        f"the inherited API socket {where} is not a Unix socket or a loopback address; "
        "the API must not be reachable from a network (use a loopback ListenStream=)",
    )
