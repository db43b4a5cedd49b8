"""peerdistd.systemd: sd_notify datagrams and socket activation, checked across processes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peerdistd.systemd import Notifier, listen_fds, named_listen_fds, watchdog_interval

NOTIFYING_CHILD = textwrap.dedent(
    """
    from peerdistd.systemd import Notifier
    n = Notifier()
    assert n.enabled
    n.ready("serving 3 peers")
    n.status("cache 12% full")
    n.watchdog()
    n.reloading()
    n.stopping()
    n.close()
    """
)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="pd-") as name:
        yield Path(name)


def receive_all(sock: socket.socket, count: int) -> list[str]:
    sock.settimeout(10)
    return [sock.recv(4096).decode() for _ in range(count)]


def run_child(code: str, env: dict[str, str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        **kwargs,  # type: ignore[call-overload]
    )


def test_child_notifies_a_path_socket(short_tmp: Path) -> None:
    address = str(short_tmp / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        run_child(NOTIFYING_CHILD, {"NOTIFY_SOCKET": address})
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        messages = receive_all(receiver, 5)
    assert messages[:3] == [
        "READY=1\nSTATUS=serving 3 peers",
        "STATUS=cache 12% full",
        "WATCHDOG=1",
    ]
    reloading, monotonic = messages[3].split("\n")
    assert reloading == "RELOADING=1"
    assert monotonic.startswith("MONOTONIC_USEC=")
    assert before <= int(monotonic.removeprefix("MONOTONIC_USEC=")) <= after
    assert messages[4] == "STOPPING=1"


def test_child_notifies_an_abstract_socket() -> None:
    name = f"peerdistd-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        run_child(NOTIFYING_CHILD, {"NOTIFY_SOCKET": "@" + name})
        assert receive_all(receiver, 1) == ["READY=1\nSTATUS=serving 3 peers"]


def test_without_notify_socket_everything_is_a_no_op() -> None:
    with Notifier(env={}) as notifier:
        assert not notifier.enabled
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    assert Notifier(env={"NOTIFY_SOCKET": "vsock:2:1234"}).enabled is False


def test_unreachable_socket_does_not_raise(short_tmp: Path) -> None:
    with Notifier(env={"NOTIFY_SOCKET": str(short_tmp / "nobody")}) as notifier:
        assert notifier.enabled
        assert notifier.ready() is False


def test_status_stays_on_one_line(short_tmp: Path) -> None:
    address = str(short_tmp / "n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        with Notifier(env={"NOTIFY_SOCKET": address}) as notifier:
            assert notifier.status("two\nlines")
            assert notifier.extend_timeout(1.5)
        assert receive_all(receiver, 2) == ["STATUS=two lines", "EXTEND_TIMEOUT_USEC=1500000"]


def test_watchdog_interval() -> None:
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "zero"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


async def test_keep_alive_pings_until_cancelled(short_tmp: Path) -> None:
    address = str(short_tmp / "n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        receiver.setblocking(False)
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000"}
        loop = asyncio.get_running_loop()
        with Notifier(env=env) as notifier:
            task = asyncio.create_task(notifier.keep_alive())
            pings = [await asyncio.wait_for(loop.sock_recv(receiver, 64), 10) for _ in range(3)]
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert pings == [b"WATCHDOG=1"] * 3


async def test_keep_alive_returns_at_once_without_a_watchdog() -> None:
    await asyncio.wait_for(Notifier(env={}).keep_alive(), 1)
    with Notifier(env={"NOTIFY_SOCKET": "/x"}) as notifier:
        await asyncio.wait_for(notifier.keep_alive(), 1)


# What systemd does before exec: the socket at fd 3, LISTEN_PID = the pid that will run.
ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2]])"
)


def activated(fd: int, code: str) -> list[str]:
    return [sys.executable, "-c", ACTIVATE, str(fd), code]


ACTIVATED_CHILD = textwrap.dedent(
    """
    import fcntl, os, socket
    from peerdistd.systemd import named_listen_fds
    [(name, sock)] = named_listen_fds()
    cloexec = bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    left = [k for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES") if k in os.environ]
    print(name, sock.fileno(), sock.family.name, sock.type.name, cloexec, left, flush=True)
    conn, _ = sock.accept()
    conn.sendall(b"hello from fd 3")
    conn.close()
    """
)


def test_listen_fds_in_a_socket_activated_child(short_tmp: Path) -> None:
    address = str(short_tmp / "api.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen()
    child = subprocess.Popen(
        activated(listener.fileno(), ACTIVATED_CHILD),
        env={**os.environ, "LISTEN_FDS": "1", "LISTEN_FDNAMES": "api"},
        pass_fds=(listener.fileno(),),
        stdout=subprocess.PIPE,
        text=True,
    )
    listener.close()
    try:
        assert child.stdout is not None
        line = child.stdout.readline().split()
        assert line == ["api", "3", "AF_UNIX", "SOCK_STREAM", "True", "[]"]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(address)
            assert client.recv(64) == b"hello from fd 3"
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()  # type: ignore[union-attr]


def test_listen_fds_ignores_another_process_descriptors() -> None:
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert listen_fds(env) == []
    assert listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}) == []
    assert listen_fds({}) == []


def test_listen_fds_rejects_a_non_socket(short_tmp: Path) -> None:
    code = textwrap.dedent(
        """
        from peerdistd.errors import ConfigError
        from peerdistd.systemd import listen_fds
        try:
            listen_fds()
        except ConfigError as exc:
            print(exc)
        """
    )
    path = short_tmp / "plain"
    path.write_text("not a socket")
    with path.open() as plain:
        done = subprocess.run(
            activated(plain.fileno(), code),
            env={**os.environ, "LISTEN_FDS": "1"},
            pass_fds=(plain.fileno(),),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    assert done.stdout.startswith("LISTEN_FDS: descriptor 3 is not a socket")


def test_names_default_to_unknown_when_they_do_not_match() -> None:
    # Zero descriptors with names: nothing to wrap, nothing raised.
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "0", "LISTEN_FDNAMES": "a:b"}
    assert named_listen_fds(env) == []
