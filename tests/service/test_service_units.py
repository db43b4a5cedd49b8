"""systemd units, container files and deployment docs: verified by the tools that judge them."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peerdistd.config import load_config
from peerdistd.paths import default_paths

REPO = Path(__file__).resolve().parents[2]
SERVICE = REPO / "systemd" / "peerdistd.service"
SOCKET = REPO / "systemd" / "peerdistd.socket"
DOCS = REPO / "docs" / "deployment.md"
BIN = Path(sys.executable).parent
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def directives(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file (keys may repeat), comments left out."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(
            "systemd-analyze is missing and cannot be installed here: "
            + ("not running as root" if os.geteuid() != 0 else "no apt-get on this system")
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "systemd"]):
        subprocess.run(command, check=True, env=env, capture_output=True, timeout=900)
    found = shutil.which("systemd-analyze")
    assert found, "apt-get install systemd did not provide systemd-analyze"
    return found


@pytest.fixture
def verifiable_units(tmp_path: Path) -> tuple[Path, Path]:
    # verify checks that ExecStart's binary exists: point it at this venv's peerdistd.
    text = SERVICE.read_text()
    assert "\nExecStart=/opt/peerdistd/bin/peerdistd serve\n" in text
    service = tmp_path / "peerdistd.service"
    service.write_text(text.replace("/opt/peerdistd/bin/peerdistd", str(BIN / "peerdistd")))
    socket_unit = tmp_path / "peerdistd.socket"
    shutil.copy(SOCKET, socket_unit)
    return service, socket_unit


def test_units_pass_systemd_analyze_verify(
    systemd_analyze: str, verifiable_units: tuple[Path, Path]
) -> None:
    done = subprocess.run(
        [systemd_analyze, "verify", *map(str, verifiable_units)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stderr == ""
    assert done.returncode == 0


def test_security_exposure_is_the_one_documented(
    systemd_analyze: str, verifiable_units: tuple[Path, Path]
) -> None:
    done = subprocess.run(
        [systemd_analyze, "security", "--offline=true", "--no-pager", str(verifiable_units[0])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(
        r"Overall exposure level for peerdistd\.service: (\d+\.\d+) (\w+)", done.stdout
    )
    assert match, done.stdout[-500:] + done.stderr
    score, verdict = match.groups()
    assert float(score) <= 2.0
    assert f"gives **{score} {verdict}**" in DOCS.read_text()


def test_service_unit_settings() -> None:
    unit = directives(SERVICE)
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "WatchdogSec": ["30"],
        "ExecStart": ["/opt/peerdistd/bin/peerdistd serve"],
        "ExecReload": ["kill -HUP $MAINPID"],
        "Restart": ["on-failure"],
        "DynamicUser": ["yes"],
        "StateDirectory": ["peerdistd"],
        "CacheDirectory": ["peerdistd"],
        "RuntimeDirectory": ["peerdistd"],
        "RuntimeDirectoryPreserve": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "NoNewPrivileges": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"],
        "AmbientCapabilities": ["CAP_NET_BIND_SERVICE"],
        "CapabilityBoundingSet": ["CAP_NET_BIND_SERVICE"],
        "ProtectKernelTunables": ["yes"],
        "ProtectKernelModules": ["yes"],
        "ProtectKernelLogs": ["yes"],
        "LockPersonality": ["yes"],
        "MemoryDenyWriteExecute": ["yes"],
        "SystemCallFilter": ["@system-service", "~@privileged @resources", "@chown"],
    }
    assert {key: unit.get(key) for key in expected} == expected


def test_socket_unit_settings() -> None:
    unit = directives(SOCKET)
    assert unit["ListenStream"] == ["%t/peerdistd/api.sock"]
    assert unit["SocketMode"] == ["0660"]
    assert unit["FileDescriptorName"] == ["api"]
    # The daemon's own default socket as root is where the socket unit puts it.
    assert default_paths(uid=0, env={}).socket == Path("/run/peerdistd/api.sock")


MDWE_CHILD = textwrap.dedent(
    """
    import asyncio, ctypes, mmap
    assert ctypes.CDLL(None).prctl(66, 0, 0, 0, 0) == 1  # PR_GET_MDWE: still in force
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        raise SystemExit("a writable+executable mapping was allowed")
    except PermissionError:
        pass
    import aiohttp, defusedxml.ElementTree, uvloop, zeroconf
    from aiohttp import web
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    import peerdistd.config, peerdistd.logs, peerdistd.metrics, peerdistd.systemd
    aes = Cipher(algorithms.AES(bytes(32)), modes.CBC(bytes(16))).encryptor()
    assert len(aes.update(bytes(32)) + aes.finalize()) == 32
    assert ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 7)() == 7  # libffi closure

    async def main():
        app = web.Application()
        app.router.add_get("/", lambda request: web.Response(text="fine"))
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            print(await response.text())
        await runner.cleanup()

    uvloop.run(main())
    """
)
MDWE_THEN_EXEC = (
    "import ctypes, os, sys; "
    "assert ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) == 0, ctypes.get_errno(); "
    "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])"
)


def test_runtime_works_under_memory_deny_write_execute() -> None:
    # systemd's MemoryDenyWriteExecute= is a seccomp filter; the kernel's PR_SET_MDWE
    # (Linux >= 6.3) refuses the same mappings, survives exec, and needs no systemd.
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(66, 0, 0, 0, 0) < 0:  # PR_GET_MDWE
        pytest.skip(f"this kernel ({os.uname().release}) has no PR_SET_MDWE (needs Linux 6.3)")
    done = subprocess.run(
        [sys.executable, "-c", MDWE_THEN_EXEC, MDWE_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "fine\n", "")


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_dockerfile_shape() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.12-slim", "python:3.12-slim"]
    assert "pip wheel" in text
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", text, re.M)
    assert 'VOLUME ["/var/lib/peerdistd", "/var/cache/peerdistd"]' in text
    assert re.search(r'^HEALTHCHECK .*CMD \["peerdist", "status"\]$', text, re.M)
    assert 'ENTRYPOINT ["peerdistd", "serve"]' in text
    assert "EXPOSE 80/tcp 3702/udp 9595/tcp" in text
    # The raw capability written must be cap_net_bind_service (bit 10), revision 2, effective.
    assert "0x02000001, 0x400, 0, 0, 0" in text


def test_container_environment_gives_the_documented_paths() -> None:
    text = (REPO / "Dockerfile").read_text()
    env = dict(re.findall(r"(\w+_DIRECTORY)=(\S+)", text))
    paths = default_paths(uid=10001, env=env)
    assert (paths.state_dir, paths.cache_dir, paths.socket) == (
        Path("/var/lib/peerdistd"),
        Path("/var/cache/peerdistd"),
        Path("/run/peerdistd/api.sock"),
    )


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().split("\n")
    assert {"*", "!pyproject.toml", "!README.md", "!peerdistd/"} <= set(lines)


def test_compose_branch_of_three_valid_nodes() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed to read compose.yaml")
    compose = yaml.safe_load((REPO / "config" / "compose.yaml").read_text())
    nodes = compose["services"]
    assert sorted(nodes) == ["node1", "node2", "node3"]
    addresses = set()
    for name, node in nodes.items():
        address = node["networks"]["branch"]["ipv4_address"]
        addresses.add(address)
        assert node["environment"]["PEERDISTD_PEERS_ADVERTISE"] == f"{address}:80"
        assert node["cap_add"] == ["NET_BIND_SERVICE"]
        assert node["read_only"] is True
        assert {v.split(":")[1] for v in node["volumes"]} == {
            "/var/lib/peerdistd",
            "/var/cache/peerdistd",
        }
        config = load_config(None, env=node["environment"], uid=10001)  # every key is valid
        assert config.peers.advertise == f"{address}:80", name
    assert len(addresses) == 3
    assert compose["networks"]["branch"]["ipam"]["config"] == [{"subnet": "172.28.0.0/24"}]


def test_docs_show_the_docker_run_line_and_the_unit_steps() -> None:
    text = DOCS.read_text()
    assert "docker run -d --name peerdistd --restart unless-stopped --network host" in text
    assert "systemctl enable --now peerdistd.socket peerdistd.service" in text
    assert "docker compose -f config/compose.yaml up -d --build" in text
