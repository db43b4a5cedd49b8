"""The README and docs stand alone and match what ships (issue 11, items 12 and 13)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import zeroconf.const

from peerdistd.config import PeersConfig
from peerdistd.proto.pccrd import GROUP_V4, GROUP_V6, PORT

REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = REPO / "docs" / "deployment.md"
SERVICE = REPO / "systemd" / "peerdistd.service"
# What a user of a clone reads: none of it may point outside the repository.
READ_BY_USERS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "tests" / "vectors" / "README.md",
    *sorted((REPO / "examples").iterdir()),
    *sorted((REPO / "config").iterdir()),
    *sorted((REPO / "systemd").iterdir()),
    REPO / "Dockerfile",
]
OUTSIDE = ("../shared", "DESIGN.md", "PROTOCOLS.md", "STYLE.md")


def section(text: str, title: str) -> str:
    """The text of the ``## title`` section, up to the next heading of that level."""
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_docs_cite_nothing_outside_the_repository() -> None:
    for path in READ_BY_USERS:
        if path.is_file():
            text = path.read_text()
            assert [o for o in OUTSIDE if o in text] == [], path


def test_relative_links_of_the_docs_resolve() -> None:
    for path in [p for p in READ_BY_USERS if p.suffix == ".md"]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            assert (path.parent / target.partition("#")[0]).exists(), f"{path}: {target}"


def test_the_unit_starts_what_the_documented_install_installs(tmp_path: Path) -> None:
    install = section(DEPLOYMENT.read_text(), "systemd")
    match = re.search(r"python3 -m venv (\S+)\n\s*\1/bin/pip install \.\n", install)
    assert match, install
    venv = Path(match[1])
    # pip installs a package's scripts into its environment's sysconfig "scripts" path:
    # ask a venv made the documented way where that is.
    made = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(made)], check=True)
    scripts = subprocess.run(
        [
            str(made / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["peerdistd"] == "peerdistd.daemon:main"
    installed = venv / Path(scripts).relative_to(made) / "peerdistd"
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", SERVICE.read_text(), re.M)
    assert exec_start == f"{installed} serve"
    assert f"python3 -m venv {venv} && {venv}/bin/pip install ." in (REPO / "README.md").read_text()


def test_firewall_section_opens_every_port_the_daemon_listens_on() -> None:
    firewall = section(DEPLOYMENT.read_text(), "Firewall")
    retrieval = int(PeersConfig().listen.rpartition(":")[2])
    mdns = zeroconf.const._MDNS_PORT
    for needed in (f"TCP {retrieval}", f"UDP {PORT}", f"UDP {mdns}", GROUP_V4, GROUP_V6):
        assert needed in firewall, needed
    for group in (zeroconf.const._MDNS_ADDR, zeroconf.const._MDNS_ADDR6):
        assert group in firewall, group


def test_deployment_covers_windows_clients_upgrades_backups_and_removal() -> None:
    text = DEPLOYMENT.read_text()
    windows = section(text, "Windows clients")
    assert "netsh branchcache set service mode=distributed" in windows
    assert "Set BranchCache Distributed Cache mode" in windows
    assert "BranchCache - Content Retrieval (Uses HTTP)" in windows  # TCP 80
    assert "BranchCache - Peer Discovery (Uses WSD)" in windows  # UDP 3702
    assert "/opt/peerdistd/bin/pip install --upgrade ." in section(text, "Upgrades")
    assert "server-secret" in section(text, "Backing up the server secret")
    assert "systemctl disable --now" in section(text, "Uninstalling")
    assert "Delivery Optimization" in section(
        text, "peerdistd, Delivery Optimization and Connected Cache"
    )
