"""Who is calling: the uid of the peer of an API connection.

Unix sockets give it directly (SO_PEERCRED). For the optional loopback TCP listener the kernel
still knows which uid owns the client's socket: it is in /proc/net/tcp{,6}, as identd uses it.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_uid(sock: socket.socket | None, proc: Path = Path("/proc/net")) -> int | None:
    """The uid of the process at the other end of ``sock``, or None if it cannot be told."""
    if sock is None:
        return None
    if sock.family == socket.AF_UNIX:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        uid: int = _UCRED.unpack(raw)[1]
        return uid
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        local = sock.getsockname()
        remote = sock.getpeername()
        return _tcp_owner(remote[0], remote[1], local[0], local[1], proc)
    return None


def _hex_addr(host: str, port: int) -> str:
    ip = ipaddress.ip_address(host)
    packed = ip.packed
    if ip.version == 4:
        addr = packed[::-1].hex().upper()
    else:  # four host-order 32-bit words
        addr = "".join(packed[i : i + 4][::-1].hex().upper() for i in range(0, 16, 4))
    return f"{addr}:{port:04X}"


def _tcp_owner(host: str, port: int, peer_host: str, peer_port: int, proc: Path) -> int | None:
    """Find the socket whose local end is (host, port) and remote end (peer_host, peer_port)."""
    want_local = _hex_addr(host, port)
    want_remote = _hex_addr(peer_host, peer_port)
    name = "tcp6" if ipaddress.ip_address(host).version == 6 else "tcp"
    try:
        lines = (proc / name).read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
            return int(fields[7])
    return None
