"""Which API socket a client uses when none is named, and what to say when it cannot connect.

Clients try this user's own daemon's socket, then the system service's, skipping a socket file
no daemon listens on (left by one killed with -9): a dead per-user socket must not hide a live
system service.
"""

from __future__ import annotations

import errno
import grp
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from peerdistd.paths import default_paths

__all__ = ["SYSTEM_SOCKET", "default_socket_path", "socket_candidates", "unreachable"]

SYSTEM_SOCKET = Path("/run/peerdistd/api.sock")


def socket_candidates(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The API sockets to try, in order, when none is named.

    ``$PEERDISTD_SOCKET`` (or ``$PEERDISTD_DAEMON_SOCKET``, the daemon's own key) alone if
    set; else the socket a daemon of this user would bind (``paths.default_paths``), then
    the system service's ``/run/peerdistd/api.sock``.
    """
    env = os.environ if environ is None else environ
    for name in ("PEERDISTD_SOCKET", "PEERDISTD_DAEMON_SOCKET"):
        if env.get(name):
            return [Path(env[name])]
    own = default_paths(env=env).socket
    return [own] if own == SYSTEM_SOCKET else [own, SYSTEM_SOCKET]


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """The first of :func:`socket_candidates` where a daemon accepts connections.

    A socket file left by a daemon that is gone is skipped. When none answers: the first one
    that exists (its error then says why), else the last (the system service's).
    """
    candidates = socket_candidates(environ)
    existing = [path for path in candidates if _exists(path)]
    for path in existing:
        if _accepts(path):
            return path
    return existing[0] if existing else candidates[-1]


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a directory on the way we may not search: not ours to use
        return False


def _accepts(path: Path) -> bool:
    """Whether a daemon listens on ``path`` (a Unix connect answers at once, never blocks)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def unreachable(where: str, exc: OSError) -> str:
    """Why the daemon at ``where`` cannot be reached, and what to do about it, in a sentence."""
    if exc.errno == errno.EACCES:
        group = _group_of(Path(where))
        join = f"join its group {group!r}" if group else "join the group that owns it"
        return (
            f"permission denied on peerdistd's socket {where}: {join} "
            "(the daemon's daemon.socket_group setting) and log in again, or run as root"
        )
    # The errno's own words: asyncio rewords a refusal as "Connect call failed (...)".
    code = exc.errno or 0
    reason = os.strerror(code) if code > 0 else exc.strerror or str(exc)
    return f"cannot reach peerdistd at {where}: {reason} — is it running?"


def _group_of(path: Path) -> str | None:
    """The group of the socket, else of the nearest folder above it we may look at (a
    socket in a folder we cannot search is kept from us by that folder's group)."""
    for candidate in (path, *path.parents):
        try:
            gid = candidate.stat().st_gid
        except OSError:
            continue
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return None
    return None
