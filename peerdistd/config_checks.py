"""Value checks of the configuration keys beyond their types (see ``config.CHECKS``).

Each check returns a message naming what is wrong, or None when the value is fine; the
loader turns a message into ``ConfigError(key, message)``.
"""

from __future__ import annotations

import grp
import ipaddress
from collections.abc import Callable
from typing import Any

from peerdistd.errors import ConfigError

__all__ = ["CHECKS", "LOG_LEVELS", "Check", "is_loopback", "parse_endpoint", "split_server"]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_endpoint(key: str, value: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """Split ``"ip:port"`` or ``"[ipv6]:port"`` into (host, port); the host must be an IP."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        port = int(port_text, 10)
    except ValueError:
        port = -1
    if not sep or not 0 <= port <= 65535 or (port == 0 and not allow_port_zero):
        raise ConfigError(key, f"must be an IP address and port like 127.0.0.1:8080, got {value!r}")
    return host, port


def is_loopback(key: str, value: str) -> bool:
    return ipaddress.ip_address(parse_endpoint(key, value)[0]).is_loopback


# Checks beyond the type: each returns a message, or None when the value is fine.
Check = Callable[[str, Any], str | None]


def _between(lo: float, hi: float | None = None) -> Check:
    bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"

    def check(_: str, value: Any) -> str | None:
        got = f"{value:g}" if isinstance(value, float) else value  # 150, not 150.0
        return (
            None if lo <= value and (hi is None or value <= hi) else f"must be {bound}, got {got}"
        )

    return check


def _one_of(*choices: Any) -> Check:
    names = ", ".join(map(str, choices))
    return lambda _, v: None if v in choices else f"must be one of {names}, got {v!r}"


def _endpoint(*, optional: bool = False, reachable: bool = False) -> Check:
    def check(key: str, value: Any) -> str | None:
        if value or not optional:
            host, _ = parse_endpoint(key, value, allow_port_zero=not reachable)
            if reachable and ipaddress.ip_address(host).is_unspecified:
                return f"must be an address peers can reach, got {value!r}"
        return None

    return check


def _octal_mode(_: str, value: Any) -> str | None:
    ok = len(value) > 0 and set(value) <= set("01234567") and int(value, 8) <= 0o777
    return None if ok else f"must be an octal file mode like 0660, got {value!r}"


def _loopback_only(key: str, value: Any) -> str | None:
    # DESIGN.md, "The local API": never on a LAN address.
    ok = not value or is_loopback(key, value)
    return None if ok else f"must be a loopback address, got {value!r}"


def _group(_: str, value: Any) -> str | None:
    # Checked here, not only when the socket is bound: check-config and serve agree.
    if not value:
        return None
    try:
        grp.getgrnam(value)
    except KeyError:
        return f"no group {value!r} on this host; create it (groupadd {value}) or leave it empty"
    return None


def _ip_list(_: str, value: Any) -> str | None:
    for item in value:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            return f"must list IP addresses, got {item!r}"
    return None


def _server(_: str, value: Any) -> str | None:
    """ "", "dns-sd", "host", "host:port", "[v6]" or "[v6]:port"."""
    if value in ("", "dns-sd"):
        return None
    try:
        split_server(value, 443)
    except ValueError:
        return f"must be a host name or address, optionally with :port, got {value!r}"
    return None


def split_server(value: str, default_port: int) -> tuple[str, int]:
    """(host, port) of a hosted_cache.server value; ValueError if it is not one."""
    host, port = value, default_port
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket:
            raise ValueError(value)
        if rest:
            port = int(rest.removeprefix(":")) if rest.startswith(":") else -1
    elif value.count(":") == 1:
        host, _, text = value.partition(":")
        port = int(text)
    if not host or any(c.isspace() or c in "/@" for c in host) or not 0 < port < 65536:
        raise ValueError(value)
    return host, port


CHECKS: dict[str, Check] = {
    "daemon.socket_mode": _octal_mode,
    "daemon.socket_group": _group,
    "daemon.api_tcp": _loopback_only,
    "daemon.handle_idle_timeout": _between(1),
    "daemon.shutdown_timeout": _between(0),
    "daemon.held_limit_bytes": _between(0),
    "daemon.log_level": _one_of(*LOG_LEVELS),
    "daemon.log_format": _one_of("text", "json"),
    "cache.limit_bytes": _between(0),
    "cache.limit_percent": _between(0, 100),
    "cache.scrub_bytes_per_second": _between(0),
    "content.version": _one_of(1, 2),
    "hosted_cache.listen": _endpoint(),
    "hosted_cache.upload_limit": _between(1),
    "hosted_cache.pull_slots": _between(1, 1024),
    "hosted_cache.offerer_rate": _between(0),
    "hosted_cache.pull_queue": _between(1),
    "hosted_cache.unverified_limit_bytes": _between(0),
    "hosted_cache.unverified_per_offerer_bytes": _between(0),
    "hosted_cache.server": _server,
    "hosted_cache.server_v2_port": _between(1, 65535),
    "hosted_cache.offer_version": _one_of(1, 2),
    "hosted_cache.offer_queue": _between(1),
    "content.hash": _one_of("sha256", "sha384", "sha512"),
    "peers.listen": _endpoint(),
    "peers.advertise": _endpoint(optional=True, reachable=True),
    "peers.interfaces": _ip_list,
    "peers.discovery_port": _between(1, 65535),
    "peers.discovery_window_ms": _between(0, 60_000),
    "peers.upload_limit": _between(1),
    "peers.max_inflight": _between(1),
    "peers.max_inflight_per_peer": _between(1),
    "peers.ban_seconds": _between(0),
    "peers.request_timeout_ms": _between(1),
    "peers.piece_size": _between(64 * 1024, 1 << 20),
    "peers.claim_ttl_ms": _between(200, 60_000),
    "peers.claim_port": _between(1, 65535),
    "peers.fetch_workers": _between(1, 64),
    "peers.failures_to_ban": _between(0),
    "peers.min_transfer_rate": _between(0),
    "metrics.listen": _endpoint(optional=True),
}
