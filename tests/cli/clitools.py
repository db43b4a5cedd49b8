"""Running ``peerdist`` as a user does: a process of its own, against real daemons."""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# The package of this checkout (not whatever an installed console script points at).
PEERDIST = [sys.executable, "-c", "import sys; from peerdistd.cli import main; sys.exit(main())"]


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's environment without peerdistd overrides; this checkout importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PEERDISTD_", "NOTIFY_"))}
    return env | {"PYTHONPATH": str(REPO)} | extra


@contextmanager
def short_dir(prefix: str = "pdc") -> Iterator[Path]:
    """A folder under /tmp with a short name: a socket path has at most 108 bytes."""
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class RawOrigin:
    """An HTTP origin on loopback written by hand, to misbehave exactly as a test says:
    answer the Range asked (else everything), cutting or holding the Nth answer mid-body."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ranges: list[str] = []
        self.hanging = asyncio.Event()  # set once an answer is left hanging
        self.cut_after: dict[int, int] = {}  # request number -> body bytes sent before a cut
        self.hang_after: dict[int, int] = {}  # request number -> body bytes sent, then wait
        self.claim_length: int | None = None  # a Content-Length to claim (plain answers)
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RawOrigin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/f.bin"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the test is over (__aexit__): end quietly, not as a cancelled callback
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        wanted = headers.get("Range", "")
        self.ranges.append(wanted)
        number = len(self.ranges)
        if wanted:
            first, last = (int(x) for x in wanted.removeprefix("bytes=").split("-"))
            body = self.data[first : last + 1]
            status = "206 Partial Content"
            extra = f"Content-Range: bytes {first}-{last}/{len(self.data)}\r\n"
        else:
            body, status, extra = self.data, "200 OK", ""
        length = self.claim_length if self.claim_length is not None else len(body)
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\n{extra}"
            "Connection: close\r\n\r\n".encode()
        )
        if number in self.cut_after:
            writer.write(body[: self.cut_after[number]])
            await writer.drain()
            return  # closed mid-body
        if number in self.hang_after:
            writer.write(body[: self.hang_after[number]])
            await writer.drain()
            self.hanging.set()
            await asyncio.Event().wait()  # until the test ends
        writer.write(body)
        await writer.drain()


def run_cli(*argv: str, **kw: Any) -> subprocess.CompletedProcess[Any]:
    """``peerdist ARGV`` to its end, output captured (as text unless ``text=False``)."""
    options: dict[str, Any] = {"env": cli_env(), "capture_output": True, "text": True}
    return subprocess.run([*PEERDIST, *argv], check=False, timeout=60, **(options | kw))


def listing(folder: Path) -> list[str]:
    """The names in ``folder``, sorted."""
    return sorted(p.name for p in folder.iterdir())


NOBODY = 65534


def _import_everything() -> None:
    """Every peerdistd module and what runs import on first use, while root may still read
    the Python install (uid 65534 may not): what the child imports depended on which tests
    ran in this process before (the subcommands import lazily; asyncio.to_thread imports
    concurrent.futures.thread on its first call)."""
    import peerdistd

    importlib.import_module("concurrent.futures.thread")
    for module in pkgutil.walk_packages(peerdistd.__path__, "peerdistd."):
        importlib.import_module(module.name)


def as_nobody(func: Callable[[], int]) -> tuple[int, str]:
    """``func()`` in a forked child running as uid/gid 65534: its exit code and stderr.

    A fork, not a new interpreter: the Python install may sit where another uid cannot read
    (import what ``func`` needs before calling this).
    """
    if os.geteuid() != 0:
        pytest.skip("needs root to run a command as a second uid (CI runs as root)")
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, run, exit without the parent's clean-up
        code = 99
        try:
            os.close(read_end)
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            _import_everything()
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = func()
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        err = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err
