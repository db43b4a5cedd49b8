"""Real daemons for tests: ``peerdistd serve`` in a subprocess, on a socket in tmp_path.

Readiness is known, not guessed: the test hands the daemon a NOTIFY_SOCKET of its own and
waits for READY=1, exactly as systemd would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

START_TIMEOUT = 30.0


Socket = socket.socket  # the field ``socket`` below hides the module inside the class


@dataclass
class DaemonProcess:
    root: Path
    socket: Path
    proc: subprocess.Popen[bytes]
    notify: Socket
    messages: list[str] = field(default_factory=list)
    log: Path | None = None

    def wait_for(self, prefix: str, timeout: float = START_TIMEOUT) -> str:
        """Block until the daemon sends a notify line starting with ``prefix``."""
        for message in self.messages:
            if message.startswith(prefix):
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            self.notify.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                continue
            lines = data.decode().splitlines()
            self.messages.extend(lines)  # keep every line of the datagram, not just the match
            for line in lines:
                if line.startswith(prefix):
                    return line
        raise TimeoutError(f"no {prefix!r} from the daemon:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=str(self.socket)), base_url="http://peerdistd"
        )


def start_daemon(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    preexec: Callable[[], object] | None = None,
    name: str = "node",
    netns: str | None = None,
    prefix: Sequence[str] = (),
    metrics: str | None = "",
) -> DaemonProcess:
    """``metrics`` None: no --metrics flag, the daemon's own default (in a netns only)."""
    root.mkdir(parents=True, exist_ok=True)
    notify_path = root / f"{name}-notify.sock"
    with contextlib.suppress(FileNotFoundError):
        notify_path.unlink()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    sock = root / f"{name}.sock"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("PEERDISTD_", "NOTIFY_"))}
    full_env.update(env or {})
    full_env["NOTIFY_SOCKET"] = str(notify_path)
    full_env["XDG_CONFIG_HOME"] = str(root / "config")
    log = root / f"{name}.log"
    cmd = [
        *(["ip", "netns", "exec", netns] if netns else []),
        *prefix,
        sys.executable,
        "-m",
        "peerdistd.daemon",
        "serve",
        "--state-dir",
        str(root / f"{name}-state"),
        "--cache-dir",
        str(root / f"{name}-cache"),
        "--socket",
        str(sock),
        *(["--metrics", metrics] if metrics is not None else []),
        *args,
    ]
    if "--listen" not in args:
        cmd.append("--no-peers")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
    daemon = DaemonProcess(root, sock, proc, notify, log=log)
    try:
        daemon.wait_for("READY=1")
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        raise
    return daemon


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    if shutil.which("ip") is None:
        return "needs iproute2's ip to create network namespaces"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace with only loopback, up and multicast-capable.

    Discovery tests multicast on loopback inside it, so nothing reaches this machine's own
    interfaces; the API stays reachable from the test through Unix sockets.
    """
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    name = f"pdt-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up", "multicast", "on"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path)
    yield d
    d.stop()
    d.notify.close()


@pytest.fixture
async def api(daemon: DaemonProcess) -> AsyncIterator[aiohttp.ClientSession]:
    async with daemon.session() as session:
        yield session
