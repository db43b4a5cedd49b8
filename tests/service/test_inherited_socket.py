"""An inherited API socket (socket activation, sd_listen_fds(3)) obeys the loopback rule of
``daemon.api_tcp`` (issue 8, finding 8): the daemon refuses to start on a TCP socket bound to a
non-loopback address, and starts on a loopback one. Each daemon runs in a network namespace
of its own, created by the test, where the socket is made: nothing listens on this machine."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.harness import start_daemon

# Inside the new namespace: bind the socket as a socket unit would, hand it over as fd 3 with
# LISTEN_FDS/LISTEN_PID (this very process, which then becomes the daemon), exec the daemon.
LAUNCHER = """
import os, socket, sys
host = sys.argv[1]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_STREAM)
sock.bind((host, 9600))
sock.listen(16)
if sock.fileno() != 3:
    os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
os.execv(sys.argv[2], sys.argv[2:])
"""


def in_new_netns(host: str, setup: str = "ip link set lo up") -> list[str]:
    return [
        "unshare", "--net", "sh", "-c", setup + ' && exec "$0" "$@"',
        sys.executable, "-c", LAUNCHER, host,
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _needs_namespaces() -> None:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs root, unshare and ip to create a network namespace (CI has them)")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.9.8.7"])
def test_an_inherited_socket_on_a_network_address_is_refused(tmp_path: Path, host: str) -> None:
    # 10.9.8.7: an address the namespace gives its own interface, as a LAN address would be.
    own = f" && ip addr add {host}/32 dev lo" if host == "10.9.8.7" else ""
    prefix = in_new_netns(host, "ip link set lo up" + own)
    try:
        d = start_daemon(tmp_path, prefix=prefix)
    except RuntimeError as exc:
        refused = str(exc)
    else:
        d.stop()
        d.notify.close()
        pytest.fail(f"the daemon served the API on {host}")
    assert "daemon exited with 2" in refused
    assert "is not a Unix socket or a loopback address" in refused


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_an_inherited_loopback_socket_is_served(tmp_path: Path, host: str) -> None:
    d = start_daemon(tmp_path, prefix=in_new_netns(host))  # READY=1: serving
    try:
        assert d.stop() == 0
        assert "API listening on" in d.output()
    finally:
        d.notify.close()
