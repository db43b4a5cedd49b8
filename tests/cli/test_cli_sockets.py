"""API sockets as clients find them: a clean stop removes the daemon's socket; a client skips
a dead socket for a live one; permission denied says so, and which group to join."""

from __future__ import annotations

import grp
import json
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdistd.api import client_sockets
from peerdistd.cli import main
from tests.cli.clitools import as_nobody, short_dir
from tests.harness import DaemonProcess, start_daemon


@pytest.fixture
def root() -> Iterator[Path]:
    with short_dir() as path:
        yield path


@pytest.fixture
def daemon(root: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(root / "d")
    try:
        yield d
    finally:
        d.stop()
        d.notify.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_clean_stop_removes_the_socket(root: Path, sig: int) -> None:
    d = start_daemon(root)
    try:
        assert d.socket.is_socket()
    finally:
        assert d.stop(sig) == 0
        d.notify.close()
    assert not d.socket.exists()


def dead_socket(path: Path) -> None:
    """What a daemon killed with -9 leaves: a socket file nobody listens on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))


def test_a_dead_own_socket_is_skipped_for_the_live_system_one(
    daemon: DaemonProcess,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("PEERDISTD_SOCKET", "PEERDISTD_DAEMON_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    own = root / "own"
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(own))  # this user's daemon's socket dir
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(root / "xdg"))
    dead_socket(own / "api.sock")
    # The system service's socket is the live daemon's here.
    monkeypatch.setattr(client_sockets, "SYSTEM_SOCKET", daemon.socket)
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["listen"]["socket"] == str(daemon.socket)


def test_with_no_live_socket_the_error_names_the_dead_one(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("PEERDISTD_SOCKET", "PEERDISTD_DAEMON_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(root / "own"))
    dead_socket(root / "own" / "api.sock")
    monkeypatch.setattr(client_sockets, "SYSTEM_SOCKET", root / "system" / "api.sock")
    assert main(["status"]) == 1
    assert capsys.readouterr().err == (
        f"peerdist: error: cannot reach peerdistd at {root / 'own' / 'api.sock'}: "
        "Connection refused — is it running?\n"
    )


def test_permission_denied_says_which_group_to_join(daemon: DaemonProcess, root: Path) -> None:
    os.chmod(root, 0o755)  # the folders may be searched; the socket itself is 0660 root:root
    os.chmod(daemon.root, 0o755)
    code, err = as_nobody(lambda: main(["status", "--socket", str(daemon.socket)]))
    assert (code, err) == (
        1,
        f"peerdist: error: permission denied on peerdistd's socket {daemon.socket}: join its "
        "group 'root' (the daemon's daemon.socket_group setting) and log in again, or run as "
        "root\n",
    )


def test_a_folder_that_keeps_the_caller_out_names_its_group(
    daemon: DaemonProcess, root: Path
) -> None:
    try:
        gid = grp.getgrnam("daemon").gr_gid
    except KeyError:
        pytest.skip("needs a 'daemon' group to own the socket's folder")
    os.chmod(root, 0o755)
    os.chown(daemon.root, 0, gid)
    os.chmod(daemon.root, 0o750)  # members of 'daemon' may search it; nobody may not
    code, err = as_nobody(lambda: main(["status", "--socket", str(daemon.socket)]))
    assert (code, err) == (
        1,
        f"peerdist: error: permission denied on peerdistd's socket {daemon.socket}: join its "
        "group 'daemon' (the daemon's daemon.socket_group setting) and log in again, or run as "
        "root\n",
    )
