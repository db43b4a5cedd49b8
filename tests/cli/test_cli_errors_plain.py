"""Failures a user can cause are one line saying what went wrong and what to do, and a
non-zero exit: never a traceback, never the repr of an aiohttp exception."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.clitools import PEERDIST, RawOrigin, cli_env, listing, run_cli, short_dir
from tests.content import content, content_information
from tests.harness import DaemonProcess, start_daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with short_dir() as root:
        d = start_daemon(root)
        try:
            yield d
        finally:
            d.stop()
            d.notify.close()


def one_error_line(err: str) -> None:
    assert err.startswith("peerdist: error: ")
    assert err.count("\n") == 1, err
    for raw in ("Traceback", "Error(", "ConnectionKey", "ClientPayloadError"):
        assert raw not in err


def test_import_key_without_a_terminal_or_input(tmp_path: Path) -> None:
    (tmp_path / "export.key").write_bytes(bytes(32))
    done = run_cli(
        *("import-key", str(tmp_path / "export.key"), "--secret-file", str(tmp_path / "secret")),
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal, as under cron or ssh -T
    )
    assert (done.returncode, done.stdout) == (1, "")
    one_error_line(done.stderr)
    assert "--passphrase-file" in done.stderr
    assert not (tmp_path / "secret").exists()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_origin_that_refuses_is_one_sentence(daemon: DaemonProcess, tmp_path: Path) -> None:
    ci = tmp_path / "f.ci"
    ci.write_bytes(content_information(content(100_000, seed=41)).to_bytes())
    port = free_port()
    url = f"http://127.0.0.1:{port}/f.bin"
    done = run_cli(
        *("fetch", "--content-info", str(ci), "--origin", url, "-o", str(tmp_path / "out")),
        *("--socket", str(daemon.socket)),
    )
    assert done.returncode == 1
    one_error_line(done.stderr)
    assert done.stderr == (
        f"peerdist: error: origin {url} (bytes 0-99999): cannot connect to 127.0.0.1:{port}: "
        "Connection refused — check the URL and that the origin is up\n"
    )


async def test_an_origin_that_closes_early_is_one_sentence(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    data = content(200_000, seed=42)
    async with RawOrigin(data) as origin:
        origin.cut_after[1] = 10_000  # a plain answer (no PeerDist) cut short
        proc = await asyncio.create_subprocess_exec(
            *PEERDIST, "fetch", origin.url, "-o", str(tmp_path / "out"),
            "--socket", str(daemon.socket),
            env=cli_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    one_error_line(err.decode())
    assert err.decode() == (
        f"peerdist: error: origin {origin.url}: the connection broke before the whole body "
        "arrived\n"
    )
    assert listing(tmp_path) == []
