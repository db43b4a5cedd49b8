"""A real ``peerdistd serve`` as systemd runs it: sd_notify(3) to a datagram socket of the
test's own (READY=1 only once the API answers, STATUS=, WATCHDOG=1 at half of WATCHDOG_USEC,
STOPPING=1 and exit 0 on SIGTERM, RELOADING=1 then READY=1 on SIGHUP) and socket activation
(sd_listen_fds(3): the API socket handed over as fd 3 with LISTEN_FDS and LISTEN_PID)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import START_TIMEOUT, DaemonProcess

SHUTDOWN_TIMEOUT = 3.0

# Sets what only the daemon's own process can know (its pid, for LISTEN_PID / WATCHDOG_PID:
# every variable whose value is "@pid"), moves a passed socket to fd 3 (SD_LISTEN_FDS_START),
# then becomes the daemon: exec keeps the pid, exactly as systemd's own spawn does.
LAUNCHER = """
import os, sys
fd = int(sys.argv[1])
if fd >= 0 and fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
for key, value in list(os.environ.items()):
    if value == "@pid":
        os.environ[key] = str(os.getpid())
os.execv(sys.executable, [sys.executable, "-m", "peerdistd.daemon", *sys.argv[2:]])
"""


class Launched(DaemonProcess):
    """A harness daemon that can also list what it said, watchdog pings left out."""

    def said(self) -> list[str]:
        """The lines received since the last clear, watchdog pings left out."""
        return [m for m in self.messages if m != "WATCHDOG=1"]


def launch(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    listen_fd: int | None = None,
    api_socket: bool = True,
) -> Launched:
    """``peerdistd serve`` through LAUNCHER; returns once it said READY=1."""
    root.mkdir(parents=True, exist_ok=True)
    notify_path = root / "notify.sock"
    with contextlib.suppress(FileNotFoundError):
        notify_path.unlink()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    strip = ("PEERDISTD_", "NOTIFY_", "LISTEN_", "WATCHDOG_", "RUNTIME_DIRECTORY")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(strip)}
    full_env |= {
        "NOTIFY_SOCKET": str(notify_path),
        "XDG_CONFIG_HOME": str(root / "config"),
        "RUNTIME_DIRECTORY": str(root / "run"),  # where the default API socket would go
        **(env or {}),
    }
    sock = root / "api.sock"
    cmd = [sys.executable, "-c", LAUNCHER, str(-1 if listen_fd is None else listen_fd)]
    cmd += ["serve", "--state-dir", str(root / "state"), "--cache-dir", str(root / "cache")]
    cmd += ["--metrics", "", "--no-peers", *(["--socket", str(sock)] if api_socket else [])]
    log = root / "daemon.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*cmd, *args],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=() if listen_fd is None else (listen_fd,),
        )
    d = Launched(root, sock, proc, notify, log=log)
    try:
        d.wait_for("READY=1")
    except BaseException:
        close(d)
        raise
    return d


def close(d: DaemonProcess) -> None:
    try:
        d.stop()
    finally:
        d.notify.close()


@contextlib.contextmanager
def running(root: Path, *args: str, **kwargs: object) -> Iterator[Launched]:
    d = launch(root, *args, **kwargs)  # type: ignore[arg-type]
    try:
        yield d
    finally:
        close(d)


def http_status(path: Path, sock: socket.socket | None = None) -> tuple[int, dict[str, object]]:
    """GET /v1/status over a Unix socket with a blocking socket: no client library, no retry.

    With ``sock`` the request is sent on that (already connected) socket.
    """
    with sock or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(START_TIMEOUT)
        if sock is None:
            conn.connect(str(path))
            send_status_request(conn)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def send_status_request(conn: socket.socket) -> None:
    conn.sendall(b"GET /v1/status HTTP/1.1\r\nHost: peerdistd\r\nConnection: close\r\n\r\n")


def stop(d: Launched, sig: int = signal.SIGTERM) -> tuple[int, float]:
    """Send ``sig``; wait for STOPPING=1, then the exit. Returns (exit code, seconds taken)."""
    d.messages.clear()
    start = time.monotonic()
    d.proc.send_signal(sig)
    d.wait_for("STOPPING=1")
    code = d.proc.wait(SHUTDOWN_TIMEOUT + 5)
    return code, time.monotonic() - start


def accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# -- sd_notify ---------------------------------------------------------------------------


async def test_ready_when_the_api_answers_then_status_and_stopping(tmp_path: Path) -> None:
    env = {"PEERDISTD_DAEMON_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT)}
    with running(tmp_path, env=env) as d:
        # READY=1 is the first thing said, with the STATUS= line in the same datagram ...
        assert d.messages[:2] == ["READY=1", f"STATUS=serving on {d.socket}"]
        # ... and the API answers at once: one connect, no retry.
        code, body = http_status(d.socket)
        assert (code, body["status"], body["listen"]) == (
            200,
            "AVAILABLE",
            {"socket": str(d.socket), "peers": None},
        )
        # A client holding the event stream open must not hold up the shutdown.
        async with (
            d.session() as api,
            api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=30)) as events,
        ):
            assert events.status == 200
            assert await events.content.readline() == b"event: STATUS_CHANGED\n"
            code, took = stop(d)
        assert d.said() == ["STOPPING=1"]
        assert code == 0
        assert took < SHUTDOWN_TIMEOUT
        assert d.output().rstrip().endswith("stopped")
        assert not accepts(d.socket)


def test_sigint_stops_like_sigterm(tmp_path: Path) -> None:
    with running(tmp_path) as d:
        assert stop(d, signal.SIGINT)[0] == 0


@pytest.mark.parametrize("watchdog_pid", [None, "@pid"], ids=["pid-unset", "pid-own"])
def test_watchdog_pings_at_half_of_watchdog_usec(tmp_path: Path, watchdog_pid: str | None) -> None:
    # sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be the daemon's own pid. Without
    # WATCHDOG_USEC the housekeeping period is 5 s; 1 s asks for a ping every 0.5 s.
    env = {"WATCHDOG_USEC": "1000000"} | ({"WATCHDOG_PID": watchdog_pid} if watchdog_pid else {})
    with running(tmp_path, env=env) as d:
        started = time.monotonic()
        d.wait_for("WATCHDOG=1", 5)  # the first ping may have queued up before READY was read
        stamps = []
        for _ in range(3):
            d.messages.clear()
            d.wait_for("WATCHDOG=1", 5)
            stamps.append(time.monotonic())
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        # asyncio.sleep never wakes early, so no gap is much below 0.5 s; and all the pings came
        # long before one 5 s housekeeping period would have passed.
        assert all(0.4 <= gap < 2.0 for gap in gaps), gaps
        assert stamps[-1] - started < 4.0


@pytest.mark.parametrize(
    "env",
    [{}, {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}],
    ids=["no-watchdog", "another-process-watchdog"],
)
def test_no_watchdog_pings_unless_this_process_is_watched(
    tmp_path: Path, env: dict[str, str]
) -> None:
    with running(tmp_path, env=env) as d:
        # The housekeeping task (which pings) ran its first round before READY=1 was even
        # sent ... and the API answering proves the event loop has turned since.
        assert http_status(d.socket)[0] == 200
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for("STOPPING=1")
        assert d.messages == ["READY=1", f"STATUS=serving on {d.socket}", "STOPPING=1"]


def test_sighup_sends_reloading_with_monotonic_usec_then_ready(tmp_path: Path) -> None:
    config = tmp_path / "peerdistd.toml"
    config.write_text("[cache]\nlimit_bytes = 50000000\n")
    with running(tmp_path, "--config", str(config)) as d:
        assert http_status(d.socket)[1]["cache"] == {
            "bytes_used": 0,
            "limit_bytes": 50_000_000,
            "segments": 0,
            "blocks": 0,
            "evictions": 0,
            "bad_blocks_from_disk": 0,
        }
        config.write_text("[cache]\nlimit_bytes = 40000000\n[peers]\nlisten = '127.0.0.1:81'\n")
        d.messages.clear()
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("READY=1")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        # systemd.service(5), Type=notify-reload: RELOADING=1 with MONOTONIC_USEC, then READY=1.
        reloading, monotonic, ready = d.said()
        assert (reloading, ready) == ("RELOADING=1", "READY=1")
        assert before <= int(monotonic.removeprefix("MONOTONIC_USEC=")) <= after
        assert http_status(d.socket)[1]["cache"]["limit_bytes"] == 40_000_000  # type: ignore[index]
        assert "reloaded: applied cache.limit_bytes; needing a restart: peers.listen" in d.output()


def test_sighup_applies_the_log_level(tmp_path: Path) -> None:
    config = tmp_path / "peerdistd.toml"
    config.write_text("[daemon]\nlog_level = 'warning'\n")
    with running(tmp_path, "--config", str(config)) as d:
        assert "INFO" not in d.output()  # "API listening on ..." was not logged
        config.write_text("[daemon]\nlog_level = 'info'\n")
        d.messages.clear()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("READY=1")
        assert stop(d)[0] == 0
        info = [line.split(" INFO ", 1)[1] for line in d.output().splitlines() if " INFO " in line]
        assert info == [
            "peerdistd: reloaded: applied daemon.log_level; needing a restart: nothing",
            "peerdistd: shutting down",
            "peerdistd: stopped",
        ]


def test_sighup_with_a_broken_file_keeps_the_running_config(tmp_path: Path) -> None:
    config = tmp_path / "peerdistd.toml"
    config.write_text("[cache]\nlimit_bytes = 50000000\n")
    with running(tmp_path, "--config", str(config)) as d:
        config.write_text("[cache]\nlimit_bytes = -1\n")
        d.messages.clear()
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("READY=1")
        assert d.said()[0] == "RELOADING=1" and d.said()[-1] == "READY=1"
        assert "reload refused, configuration invalid: cache.limit_bytes: " in d.output()
        code, body = http_status(d.socket)
        assert (code, body["cache"]["limit_bytes"]) == (200, 50_000_000)  # type: ignore[index]
        assert stop(d)[0] == 0


# -- socket activation ------------------------------------------------------------------


@pytest.fixture
def activation_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    """A listening API socket made by "systemd" (the test), as peerdistd.socket would."""
    path = tmp_path / "activated.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(16)
    with sock:
        yield path, sock


async def test_api_on_a_socket_passed_as_listen_fds(
    tmp_path: Path, activation_socket: tuple[Path, socket.socket]
) -> None:
    path, listener = activation_socket
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "@pid", "LISTEN_FDNAMES": "api"}
    root = tmp_path / "node"
    with running(root, env=env, listen_fd=listener.fileno(), api_socket=False) as d:
        assert d.messages[:2] == ["READY=1", f"STATUS=serving on {path}"]
        code, body = http_status(path)
        assert (code, body["listen"]) == (200, {"socket": str(path), "peers": None})
        d.socket = path  # the API session of the harness goes to the activated socket
        async with d.session() as api:
            data = bytes(range(256)) * 300
            async with api.post("/v1/publications", params={"id": "a"}, data=data) as r:
                assert (r.status, (await r.json())["size"]) == (201, len(data))
            async with api.get("/v1/publications/a/content-information") as r:
                assert r.status == 200
                ci = await r.read()
            async with api.post("/v1/contents", data=ci) as r:
                handle = (await r.json())["handle"]
            async with api.post(
                f"/v1/contents/{handle}/stream-read", params={"max": "1000000"}
            ) as r:
                assert (r.status, await r.read()) == (200, data)
        # The daemon never made its own socket (nor the directory it would be in).
        assert not (root / "run").exists()
        assert stop(d)[0] == 0
        # systemd owns the socket: it stays in place and keeps listening across a stop, and a
        # request made while no daemon runs is answered by the next one.
        assert path.is_socket()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting:
            waiting.connect(str(path))
            send_status_request(waiting)
            with running(root, env=env, listen_fd=listener.fileno(), api_socket=False):
                code, body = http_status(path, waiting)
        assert (code, body["counters"]["publications"]) == (200, 1)  # type: ignore[index]


def test_listen_fds_of_another_process_are_ignored(
    tmp_path: Path, activation_socket: tuple[Path, socket.socket]
) -> None:
    # sd_listen_fds(3): LISTEN_PID names the process the descriptors are for; not us -> none.
    _, listener = activation_socket
    env = {"LISTEN_FDS": "1", "LISTEN_PID": str(os.getpid())}
    root = tmp_path / "node"
    with running(root, env=env, listen_fd=listener.fileno(), api_socket=False) as d:
        default = root / "run" / "api.sock"
        assert d.messages[:2] == ["READY=1", f"STATUS=serving on {default}"]
        code, body = http_status(default)
        assert (code, body["listen"]) == (200, {"socket": str(default), "peers": None})
