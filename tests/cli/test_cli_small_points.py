"""Smaller things a person meets in the CLI: help text, advice in its own terms, one unit
system, whole node ids, what ``hash`` wrote, ``origin`` saying the daemon is missing."""

from __future__ import annotations

import io
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from peerdistd.api.client import Peer
from peerdistd.cli import main
from peerdistd.cli.progress import peers_table, progress_bar
from peerdistd.proto.pccrc import ContentInformation
from tests.cli.clitools import PEERDIST, cli_env, run_cli, short_dir
from tests.content import content
from tests.harness import DaemonProcess, start_daemon

MIB = 1 << 20


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with short_dir() as root:
        d = start_daemon(root)
        try:
            yield d
        finally:
            d.stop()
            d.notify.close()


def test_import_key_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["import-key", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "netsh branchcache exportkey" in text
    assert "`" not in text


def test_content_info_of_the_other_version_says_the_command(
    daemon: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_bytes(content(100_000, seed=51))
    sock = ["--socket", str(daemon.socket)]
    assert main(["publish", str(tmp_path / "f"), "--id", "v1", *sock]) == 0
    capsys.readouterr()
    out = tmp_path / "ci"
    assert main(["content-info", "v1", "--version", "2", "-o", str(out), *sock]) == 1
    assert capsys.readouterr().err == (
        "peerdist: error: 'v1' was published with content information V1; for V2, publish it "
        "again: peerdist publish FILE --id v1 --version 2\n"
    )
    assert not out.exists()


def test_the_progress_bar_speaks_binary_units_only() -> None:
    now = [1000.0]
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, get_time=lambda: now[0])
    with progress_bar(console, "fetch") as update:
        for second in range(4):
            now[0] = 1000.0 + second
            update(second * 3 * MIB, 16 * MIB)
    shown = screen.getvalue()
    assert "9.0/16.0 MiB" in shown
    assert "3.0 MiB/s" in shown
    assert "MB" not in shown.replace("MiB", "")


def test_node_ids_stay_whole_in_the_peers_table() -> None:
    node_id = "0123456789abcdef0123456789abcdef"
    peer = Peer(node_id, "[fe80::1234:5678:9abc:def0%eth0]:54322", 0.0, "zeroconf", 1, 2, 0)
    screen = io.StringIO()
    Console(file=screen, width=80).print(peers_table([peer]))
    assert node_id in screen.getvalue()


def test_hash_says_what_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f").write_bytes(content(300_000, seed=52))
    (tmp_path / "pass").write_bytes(b"secret words")
    out = tmp_path / "f.ci"
    assert (
        main(["hash", str(tmp_path / "f"), "-o", str(out), "--secret", str(tmp_path / "pass")]) == 0
    )
    info = ContentInformation.parse(out.read_bytes())
    assert capsys.readouterr() == (
        f"wrote {out}: content information V1 (sha256), {out.stat().st_size} bytes, "
        f"{len(info.segments)} segments, for 300000 bytes of content from offset 0\n",
        "",
    )
    # To stdout, the bytes alone; the report goes to stderr.
    done = run_cli(
        *("hash", str(tmp_path / "f"), "-o", "-", "--secret", str(tmp_path / "pass")), text=False
    )
    assert (done.returncode, done.stdout) == (0, out.read_bytes())
    assert done.stderr.decode().startswith("wrote standard output: content information V1")


def test_origin_without_a_daemon_says_so(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    absent = tmp_path / "absent.sock"
    proc = subprocess.Popen(
        [
            *(*PEERDIST, "origin", str(tmp_path / "www"), "--listen", "127.0.0.1:0"),
            *("--socket", str(absent)),
        ],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"serving {tmp_path / 'www'} at http://")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert err == (
        f"peerdist: warning: cannot reach peerdistd at {absent}: No such file or directory; "
        "serving plain bytes only (no PeerDist) until it runs\n"
    )


def test_origin_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(
            *("origin", str(tmp_path), "--listen", f"127.0.0.1:{port}"),
            *("--socket", str(tmp_path / "absent.sock")),
        )
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (
        f"peerdist: error: cannot serve on 127.0.0.1:{port}: Address already in use\n"
    )
