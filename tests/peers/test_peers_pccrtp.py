"""MS-PCCRTP end to end in a network namespace of the test's own: ``peerdist origin`` serves a
folder on 127.0.0.3 with node A's daemon behind it; node B runs ``peerdist fetch URL`` with no
content information. B gets the content information from the origin, every byte from A through
peers, and the origin serves nothing but that content information."""

from __future__ import annotations

import asyncio
import contextlib
import random
import selectors
import signal
import subprocess
import sys
from pathlib import Path

from peerdistd.api.client import PeerDistClient
from peerdistd.origin import FileKey
from tests.content import BLOCK
from tests.harness import DaemonProcess, start_daemon

SIZE = 40 * BLOCK + 4321
PEERDIST = [sys.executable, "-c", "import sys; from peerdistd.cli import main; sys.exit(main())"]
ORIGIN = "127.0.0.3:8000"


def read_line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    """The next line of ``proc``'s stdout, waiting at most ``timeout`` seconds for it."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"no line from {proc.args!r}")
    return proc.stdout.readline().rstrip("\n")


def counters(d: DaemonProcess) -> dict[str, float]:
    async def status() -> dict[str, float]:
        async with PeerDistClient(d.socket) as client:
            return dict((await client.status()).counters)

    return asyncio.run(status())


def content_information(d: DaemonProcess, pub_id: str) -> bytes:
    async def get() -> bytes:
        async with PeerDistClient(d.socket) as client:
            return await client.content_information(pub_id)

    return asyncio.run(get())


def stop(d: DaemonProcess) -> None:
    d.stop()
    d.notify.close()


def end(origin: subprocess.Popen[str]) -> str:
    """Stop the origin as a service manager would; its last line is what it served."""
    origin.send_signal(signal.SIGTERM)
    try:
        return read_line(origin)
    finally:
        origin.wait(20)
        assert origin.stdout is not None
        origin.stdout.close()


def test_fetch_url_gets_content_information_from_the_origin_and_bytes_from_peers(
    tmp_path: Path, netns: str
) -> None:
    www = tmp_path / "www"
    www.mkdir()
    data = random.Random(17).randbytes(SIZE)
    (www / "f.bin").write_bytes(data)
    env = {"PEERDISTD_PEERS_ZEROCONF": "false"}
    in_ns = ["ip", "netns", "exec", netns]
    with contextlib.ExitStack() as stack:
        a = start_daemon(tmp_path, "--listen", "127.0.0.1:8080", name="a", netns=netns, env=env)
        stack.callback(stop, a)
        b = start_daemon(tmp_path, "--listen", "127.0.0.2:8080", name="b", netns=netns, env=env)
        stack.callback(stop, b)
        args = ["origin", str(www), "--listen", ORIGIN, "--socket", str(a.socket)]
        with (tmp_path / "origin.log").open("w") as log:
            origin = subprocess.Popen(
                [*in_ns, *PEERDIST, *args], stdout=subprocess.PIPE, stderr=log, text=True
            )
        ended = stack.enter_context(contextlib.ExitStack())
        ended.callback(end, origin)
        assert read_line(origin).startswith(f"serving {www} at http://{ORIGIN}/ (peerdistd at ")

        # B asks the origin; the origin publishes the file on A first, so A holds every block.
        out = tmp_path / "b.bin"
        fetch = ["fetch", f"http://{ORIGIN}/f.bin", "-o", str(out), "--socket", str(b.socket)]
        got = subprocess.run(
            [*in_ns, *PEERDIST, *fetch], capture_output=True, text=True, timeout=60
        )
        assert got.returncode == 0, got.stderr
        assert out.read_bytes() == data
        assert ", 0 B from origin (0 range requests); content information (" in got.stdout
        stats = counters(b)  # the daemon's counters say where every byte came from
        assert (stats["bytes_from_peers"], stats["bytes_from_origin"]) == (SIZE, 0)
        assert counters(a)["bytes_served_to_peers"] >= SIZE

        st = (www / "f.bin").stat()
        key = FileKey(str(www.resolve() / "f.bin"), st.st_size, st.st_mtime_ns)
        info = content_information(a, key.publication_id(2))
        ended.pop_all()
        summary = end(origin)
    # The origin sent the content information once and not one byte of the content.
    assert summary == (
        f"served identity 0 (0 bytes), peerdist 1 ({len(info)} bytes), missing-data 0 (0 bytes)"
    ), (tmp_path / "origin.log").read_text()
