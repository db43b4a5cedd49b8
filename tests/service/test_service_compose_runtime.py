"""config/compose.yaml's nodes start as shipped, emulated without Docker (issue 11, item 1).

Docker mounts each ``tmpfs:`` entry ``PATH[:OPTIONS]`` as a tmpfs with ``nosuid,nodev,noexec``
plus OPTIONS; without ``uid=``/``gid=`` it belongs to root (mode 1777), and the daemon binds its
API socket only in a directory of its own. Here a private mount namespace gets the same tmpfs,
the process drops to the image's uid and gid keeping only CAP_NET_BIND_SERVICE (compose's
``cap_drop: [ALL]`` + ``cap_add``), and runs the image's ENTRYPOINT with the image's ENV and
the node's environment, in a network namespace standing in for the compose bridge.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import DaemonProcess, netns_unavailable
from tests.service.test_service_daemon_container import IMAGE, container_env, inside

REPO = Path(__file__).resolve().parents[2]
IMAGE_UID = int(re.search(r"^ARG UID=(\d+)$", (REPO / "Dockerfile").read_text(), re.M)[1])  # type: ignore[index]
DOCKER_TMPFS_FLAGS = "nosuid,nodev,noexec"


def compose_node(name: str) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed to read compose.yaml")
    node: dict[str, Any] = yaml.safe_load((REPO / "config" / "compose.yaml").read_text())[
        "services"
    ][name]
    return node


def tmpfs_mounts(node: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, mount options) as Docker mounts the node's short-syntax ``tmpfs:`` entries."""
    found = []
    for entry in node["tmpfs"]:
        path, _, options = entry.partition(":")
        found.append((path, ",".join(filter(None, [DOCKER_TMPFS_FLAGS, options]))))
    return found


def reachable_lines(paths: list[Path], stage: Path) -> list[str]:
    """Shell lines letting any uid reach ``paths`` in this mount namespace.

    The interpreter may live under a directory others cannot enter (/root/.pyenv here); that
    directory is covered by a 0755 tmpfs holding a bind mount of only the entry on the way.
    """
    lines: list[str] = []
    covered: set[Path] = set()
    for path in paths:
        ancestors = [*reversed(path.parents), path]
        for parent, child in itertools.pairwise(ancestors):
            if parent in covered or os.stat(parent).st_mode & stat.S_IXOTH:
                continue
            keep = stage / f"keep{len(covered)}"
            q = shlex.quote
            lines += [
                f"mkdir {q(str(keep))}",
                f"mount --bind {q(str(child))} {q(str(keep))}",
                f"mount -t tmpfs -o mode=0755 tmpfs {q(str(parent))}",
                f"mkdir {q(str(child))}",
                f"mount --move {q(str(keep))} {q(str(child))}",
            ]
            covered.add(parent)
    return lines


def as_image_user(*command: str) -> list[str]:
    """``command`` as the image's USER, with no capability but CAP_NET_BIND_SERVICE."""
    return [
        "setpriv",
        f"--reuid={IMAGE_UID}",
        f"--regid={IMAGE_UID}",
        "--clear-groups",
        "--inh-caps=-all,+net_bind_service",
        "--ambient-caps=-all,+net_bind_service",
        "--bounding-set=-all,+net_bind_service",
        "--no-new-privs",
        *command,
    ]


@contextlib.contextmanager
def compose_container(netns: str, node: dict[str, Any]) -> Iterator[DaemonProcess]:
    """The node's container: its tmpfs mounts, the image's user, ENV and entry point."""
    # Not under pytest's tmp_path: that is private to root, and the daemon is not root.
    root = Path(tempfile.mkdtemp(prefix="peerdistd-compose-"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        root.chmod(0o755)
        for volume in IMAGE.volumes:  # as the Dockerfile's `install -d -o peerdistd -m 0700`
            inside(root, volume).mkdir(parents=True, mode=0o700)
            os.chown(inside(root, volume), IMAGE_UID, IMAGE_UID)
        stage = root / "stage"
        stage.mkdir()
        script = ["set -e"]
        for path, options in tmpfs_mounts(node):
            inside(root, path).mkdir(parents=True, exist_ok=True)
            script.append(
                f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(inside(root, path)))}"
            )
        interpreter = Path(os.path.realpath(sys.executable))
        script += reachable_lines([interpreter.parent, Path(sys.prefix), REPO], stage)
        script.append('exec "$@"')
        notify_path = root / "notify.sock"
        notify.bind(str(notify_path))
        notify_path.chmod(0o666)  # the daemon, not root, sends READY=1
        env = container_env(root) | node["environment"] | {"NOTIFY_SOCKET": str(notify_path)}
        log = root / "container.log"
        with log.open("wb") as out:
            # ip netns exec, unshare, sh and setpriv all exec: the pid is the daemon's.
            proc = subprocess.Popen(
                [
                    *("ip", "netns", "exec", netns),
                    *("unshare", "--mount", "--propagation", "private"),
                    *("sh", "-c", "\n".join(script), "container"),
                    *as_image_user(*IMAGE.command),
                ],
                env=env,
                cwd=root,
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
    finally:
        notify.close()
        shutil.rmtree(root)


def test_a_compose_node_starts_as_shipped(netns: str) -> None:
    if shutil.which("setpriv") is None or shutil.which("unshare") is None:
        pytest.skip("needs util-linux's setpriv and unshare to play the container")
    assert netns_unavailable() is None  # the netns fixture skips otherwise
    node = compose_node("node1")
    runtime = IMAGE.env["RUNTIME_DIRECTORY"]
    assert runtime in {path for path, _ in tmpfs_mounts(node)}
    with compose_container(netns, node) as d:
        # Really the image's user, and really on a tmpfs it owns.
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{IMAGE_UID}\s", status, re.M), status
        # The HEALTHCHECK, as docker runs it: the same user, namespaces and environment.
        health = subprocess.run(
            [
                *("nsenter", "-t", str(d.proc.pid), "-m", "-n"),
                *as_image_user(*IMAGE.healthcheck),
            ],
            env=container_env(d.root) | node["environment"],
            cwd=d.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (health.returncode, health.stderr) == (0, ""), d.output()
        assert "AVAILABLE" in health.stdout
        d.messages.clear()
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for("STOPPING=1")
        assert d.proc.wait(30) == 0, d.output()
