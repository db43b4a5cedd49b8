"""The API socket's directory: private (0700) unless other users are meant to reach the socket.

A per-user daemon (``$XDG_RUNTIME_DIR/peerdistd`` or ``/tmp/peerdistd-<uid>``) keeps its socket
to itself; ``daemon.socket_group`` or a socket mode open to everyone needs a directory others
can enter (0755), the socket's own mode then deciding who connects.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from tests.harness import start_daemon


def dir_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 0o700),  # the defaults: socket_mode 0660, no group
        ({"PEERDISTD_DAEMON_SOCKET_MODE": "0600"}, 0o700),
        ({"PEERDISTD_DAEMON_SOCKET_MODE": "0666"}, 0o755),
    ],
)
def test_socket_directory_mode(tmp_path: Path, env: dict[str, str], expected: int) -> None:
    run = tmp_path / "run" / "peerdistd"
    d = start_daemon(tmp_path, "--socket", str(run / "api.sock"), env=env)
    try:
        assert dir_mode(run) == expected
    finally:
        d.stop()
        d.notify.close()


def test_socket_group_opens_the_directory(tmp_path: Path) -> None:

    group = grp.getgrgid(os.getegid()).gr_name  # one the daemon belongs to: chown works
    run = tmp_path / "run"
    d = start_daemon(
        tmp_path, "--socket", str(run / "api.sock"), env={"PEERDISTD_DAEMON_SOCKET_GROUP": group}
    )
    try:
        assert dir_mode(run) == 0o755
    finally:
        d.stop()
        d.notify.close()


def test_an_existing_open_directory_is_made_private(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir(mode=0o755)
    run.chmod(0o755)  # whatever the umask
    d = start_daemon(tmp_path, "--socket", str(run / "api.sock"))
    try:
        assert dir_mode(run) == 0o700
    finally:
        d.stop()
        d.notify.close()
