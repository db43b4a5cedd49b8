"""The container image's entry point, run the way the image runs it: the Dockerfile's
ENTRYPOINT + CMD (exec form) with the image's ENV, found on PATH (this venv's bin first), in a
network namespace of the test's own standing in for ``--network host``; its HEALTHCHECK
command answers, SIGTERM (``docker stop``) ends it, the VOLUMEs hold its state."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness import DaemonProcess

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The python base image's PATH (its ENV PATH), with this venv's bin first.
IMAGE_PATH = f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DOCKER_STOP_TIMEOUT = 10.0  # docker stop: SIGTERM, then SIGKILL after 10 s


@dataclass(frozen=True, slots=True)
class Image:
    """What the Dockerfile's final stage says about running the image."""

    command: list[str]  # ENTRYPOINT + CMD
    env: dict[str, str]
    healthcheck: list[str]
    volumes: list[str]
    exposed: set[str]  # "80/tcp", ...


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    found: list[tuple[str, str]] = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            found.append((op.upper(), rest.strip()))
    last_from = max(i for i, (op, _) in enumerate(found) if op == "FROM")
    return found[last_from:]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)  # the exec form: a JSON array, no shell in between
    assert isinstance(parsed, list) and all(isinstance(v, str) for v in parsed), value
    return parsed


def parse_dockerfile(path: Path) -> Image:
    entrypoint: list[str] = []
    cmd: list[str] = []
    env: dict[str, str] = {}
    health: list[str] = []
    volumes: list[str] = []
    exposed: set[str] = set()
    for op, rest in instructions(path.read_text()):
        if op == "ENTRYPOINT":
            entrypoint, cmd = exec_form(rest), []  # a new ENTRYPOINT resets CMD
        elif op == "CMD":
            cmd = exec_form(rest)
        elif op == "ENV":
            env |= dict(item.split("=", 1) for item in shlex.split(rest))
        elif op == "HEALTHCHECK":
            match = re.search(r"\bCMD\s+(\[.*\])$", rest)
            assert match, rest
            health = exec_form(match.group(1))
        elif op == "VOLUME":
            volumes += exec_form(rest)
        elif op == "EXPOSE":
            exposed |= set(rest.split())
    return Image(entrypoint + cmd, env, health, volumes, exposed)


IMAGE = parse_dockerfile(REPO / "Dockerfile")


def container_env(root: Path) -> dict[str, str]:
    """The image's ENV with every absolute path moved under ``root`` (the "container")."""
    env = {"PATH": IMAGE_PATH, "HOME": str(root / "root"), "LANG": "C.UTF-8"}
    for key, value in IMAGE.env.items():
        env[key] = str(root) + value if value.startswith("/") else value
    return env


def inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


@contextlib.contextmanager
def container(root: Path, netns: str) -> Iterator[DaemonProcess]:
    """The entry point running in ``netns``, as root (see the note in the test)."""
    root.mkdir()
    notify_path = root / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = container_env(root) | {"NOTIFY_SOCKET": str(notify_path)}
    log = root / "container.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *IMAGE.command],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    socket_path = inside(root, IMAGE.env["RUNTIME_DIRECTORY"]) / "api.sock"
    d = DaemonProcess(root, socket_path, proc, notify, log=log)
    try:
        d.wait_for("READY=1")
        yield d
    finally:
        d.stop()
        notify.close()


def run_in(root: Path, netns: str, *command: str) -> subprocess.CompletedProcess[str]:
    """A command in the container: same namespace, same environment (like docker exec)."""
    return subprocess.run(
        ["ip", "netns", "exec", netns, *command],
        env=container_env(root),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def api_status(path: Path) -> dict[str, Any]:
    """GET /v1/status on the API socket, straight from the daemon."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(30)
        conn.connect(str(path))
        conn.sendall(b"GET /v1/status HTTP/1.1\r\nHost: peerdistd\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    parsed: dict[str, Any] = json.loads(body)
    return parsed


def listening(netns: str) -> set[str]:
    """Every listening TCP and bound UDP port in ``netns``, as "PORT/proto"."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "ss", "-Hlntu"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    ports = set()
    for line in out.splitlines():
        proto, *_, local, _peer = line.split()
        ports.add(f"{local.rpartition(':')[2]}/{proto}")
    return ports


def test_the_dockerfile_runs_the_daemon_in_the_foreground() -> None:
    assert IMAGE.command == ["peerdistd", "serve"]
    assert IMAGE.healthcheck == ["peerdist", "status"]
    # The volumes are where the daemon keeps what must outlive a container.
    assert IMAGE.volumes == [IMAGE.env["STATE_DIRECTORY"], IMAGE.env["CACHE_DIRECTORY"]]
    assert IMAGE.env["RUNTIME_DIRECTORY"] not in IMAGE.volumes


def test_entry_point_serves_answers_the_healthcheck_and_stops(tmp_path: Path, netns: str) -> None:
    # The image runs as an unprivileged user with cap_net_bind_service on python3; here the
    # venv's interpreter lives under /root (0700), so the entry point runs as root instead.
    root = tmp_path / "container"
    with container(root, netns) as d:
        health = run_in(root, netns, *IMAGE.healthcheck)
        assert (health.returncode, health.stderr) == (0, "")
        assert "AVAILABLE" in health.stdout
        status = json.loads(run_in(root, netns, *IMAGE.healthcheck, "--json").stdout)
        assert status["status"] == "AVAILABLE"
        # The image's defaults: peers on port 80 of every address (no LAN address in this
        # namespace, so discovery answers carry loopback), metrics on loopback.
        assert api_status(d.socket)["listen"] == {
            "socket": str(d.socket),
            "peers": "127.0.0.1:80",
            "metrics": "http://127.0.0.1:9595/metrics",
        }
        # Every port the image EXPOSEs is really served.
        assert IMAGE.exposed <= listening(netns), d.output()

        d.messages.clear()
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for("STOPPING=1")
        assert d.proc.wait(DOCKER_STOP_TIMEOUT) == 0

    # Down: the healthcheck says so.
    health = run_in(root, netns, *IMAGE.healthcheck)
    assert health.returncode == 1
    assert health.stderr.startswith("peerdist: error: ")
    # What must survive the container lives in its VOLUMEs.
    state, cache = (inside(root, v) for v in IMAGE.volumes)
    assert {"server-secret", "node-id", "publications.db"} <= {p.name for p in state.iterdir()}
    assert (cache / "blocks").is_dir()
