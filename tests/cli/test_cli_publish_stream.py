"""``peerdist publish`` of a pipe (``<(cmd)``, a FIFO) and of standard input (``-``), against a
real daemon: the bytes are streamed, and the publication is the same as the file's."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from peerdistd.cli import main
from tests.cli.clitools import run_cli, short_dir
from tests.content import content
from tests.harness import DaemonProcess, start_daemon

DATA = content(5 * (1 << 20) + 777, seed=21)  # more than one 4 MiB read, several segments


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with short_dir() as root:
        d = start_daemon(root)
        try:
            yield d
        finally:
            d.stop()
            d.notify.close()


def publish(daemon: DaemonProcess, source: str, pub_id: str, out: Path, **kw: Any) -> str:
    done = run_cli(
        *("publish", source, "--id", pub_id, "--socket", str(daemon.socket)),
        *("--content-info", str(out)),
        text=False,
        **kw,
    )
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    return str(done.stdout.decode())


def test_a_fifo_is_published_whole(daemon: DaemonProcess, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(DATA)
    publish(daemon, str(tmp_path / "f"), "file", tmp_path / "file.ci")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:  # what `<(cat f)` is: a pipe another process writes
        with fifo.open("wb") as w:
            w.write(DATA)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        said = publish(daemon, str(fifo), "fifo", tmp_path / "fifo.ci")
    finally:
        writer.join(30)
    assert said.startswith(f"published fifo: {len(DATA)} bytes, content information V1")
    assert (tmp_path / "fifo.ci").read_bytes() == (tmp_path / "file.ci").read_bytes()


def test_standard_input_is_published(daemon: DaemonProcess, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(DATA)
    publish(daemon, str(tmp_path / "f"), "file2", tmp_path / "file.ci")
    said = publish(daemon, "-", "stdin", tmp_path / "stdin.ci", input=DATA)
    assert said.startswith(f"published stdin: {len(DATA)} bytes")
    assert (tmp_path / "stdin.ci").read_bytes() == (tmp_path / "file.ci").read_bytes()


def test_a_path_that_cannot_be_read_is_one_line(
    daemon: DaemonProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["publish", str(tmp_path / "absent"), "--socket", str(daemon.socket)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("peerdist: error: cannot read ")
    assert "No such file or directory" in err
    assert err.count("\n") == 1
