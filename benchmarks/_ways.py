"""The three ways a branch gets one file, as the branch benchmark runs them side by side.

- ``direct``: each client ``curl``s the file from the origin over the WAN;
- ``nginx``: each client ``curl``s it through one nginx caching box on the LAN (lancache's
  slice + cache-lock configuration, ``benchmarks/_nginx.py``);
- ``peerdistd``: each client host runs its own ``peerdistd serve`` with peers on its LAN
  address and runs ``peerdist fetch URL`` against ``peerdist origin`` (MS-PCCRTP).

A way starts what a row needs with fresh caches (:meth:`Way.start`), gives the command of
client i (:meth:`Way.command`) and, after the row, what it learnt (:meth:`Way.finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import _nginx
from benchmarks._lan import CACHE_PORT, ORIGIN_PORT, PEER_PORT, Branch, Procs
from benchmarks._nodes import CACHE_LIMIT, CHUNK, counters
from tests.harness import DaemonProcess, start_daemon

PEERDIST = str(Path(sys.executable).with_name("peerdist"))
CURL = shutil.which("curl") or "curl"
NODE_ENV = {"PEERDISTD_CACHE_LIMIT_BYTES": CACHE_LIMIT, "PEERDISTD_PEERS_ZEROCONF": "false"}
# "fetched ...: 0 B from cache, 12 MiB from peers, 116 MiB from origin (29 range requests)"
_REQUESTS = re.compile(r"\((\d+) range requests?\)")


def sha256(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * CHUNK):
            h.update(chunk)
    return h.digest()


def curl(url: str, out: Path) -> list[str]:
    # -g: no globbing, the [] of an IPv6 URL are literal; -f: an HTTP error fails the client.
    return [CURL, "-gsSf", "--max-time", "3600", "-o", str(out), url]


class Way:
    name = ""
    unavailable: str | None = None  # why this way cannot run here

    async def start(self, row: Path, count: int) -> None:
        """Everything the row's ``count`` clients need, with empty caches."""

    def command(self, i: int, url_name: str, out: Path) -> list[str]:
        raise NotImplementedError

    async def finish(self, outputs: list[str]) -> dict[str, Any]:
        """Stop what :meth:`start` started; what the row learnt about this way."""
        return {}


class Direct(Way):
    name = "direct"

    def __init__(self, branch: Branch) -> None:
        self.branch = branch

    def command(self, i: int, url_name: str, out: Path) -> list[str]:
        return curl(self.branch.origin_url(url_name), out)


class Nginx(Way):
    name = "nginx"

    def __init__(self, branch: Branch, procs: Procs, install: bool) -> None:
        self.branch, self.procs = branch, procs
        self.binary, self.version = _nginx.find_or_install(install)
        self.unavailable = None if self.binary else self.version
        self.prefix: Path | None = None
        self.proc: Any = None

    async def start(self, row: Path, count: int) -> None:
        assert self.binary is not None
        self.prefix = row / "nginx"
        origin = f"http://[{self.branch.origin.address}]:{ORIGIN_PORT}"
        conf = _nginx.write_config(self.prefix, str(self.branch.cache.address), CACHE_PORT, origin)
        cmd = _nginx.command(self.binary, self.prefix, conf)
        self.proc = self.procs.popen(self.branch.cache.netns, cmd, row / "nginx.out")
        ready = curl(self.branch.cache_url("ready"), Path("/dev/null"))
        await wait_until(self.procs, self.branch.cache.netns, ready, self.proc, "nginx")

    def command(self, i: int, url_name: str, out: Path) -> list[str]:
        return curl(self.branch.cache_url(url_name), out)

    async def finish(self, outputs: list[str]) -> dict[str, Any]:
        self.procs.stop(self.proc)
        assert self.prefix is not None
        cached = sum(1 for p in (self.prefix / "cache").rglob("*") if p.is_file())
        return {"nginx": self.version, "cache_entries": cached}


class Peerdistd(Way):
    name = "peerdistd"

    def __init__(self, branch: Branch, procs: Procs, peerdist_version: str) -> None:
        self.branch, self.procs = branch, procs
        self.version = peerdist_version
        self.nodes: list[DaemonProcess] = []

    async def start(self, row: Path, count: int) -> None:
        hosts = self.branch.clients[:count]

        def one(i: int) -> DaemonProcess:
            host = hosts[i]
            listen = ["--listen", host.endpoint(PEER_PORT)]
            d = start_daemon(row, *listen, name=f"c{i + 1}", netns=host.netns, env=NODE_ENV)
            self.procs.started.append(d.proc)  # killed with the rest, whatever ends the run
            return d

        # Started side by side: one after another, twenty daemons take a minute on 2 cores.
        with ThreadPoolExecutor(max_workers=min(8, count)) as pool:
            futures = [pool.submit(one, i) for i in range(count)]
            failure: BaseException | None = None
            for future in futures:
                try:
                    self.nodes.append(future.result())
                except BaseException as exc:  # stop the others below, then raise
                    failure = failure or exc
        if failure is not None:
            self.stop_nodes()
            raise failure

    def command(self, i: int, url_name: str, out: Path) -> list[str]:
        socket = str(self.nodes[i].socket)
        url = self.branch.origin_url(url_name)
        return [PEERDIST, "fetch", url, "--socket", socket, "-o", str(out),
                "--peerdist-version", self.version]  # fmt: skip

    async def finish(self, outputs: list[str]) -> dict[str, Any]:
        try:
            per_node = [await counters(d) for d in self.nodes]
        finally:
            self.stop_nodes()
        requests = []
        for text in outputs:
            found = _REQUESTS.search(text)
            requests.append(int(found.group(1)) if found else None)
        return {"origin_range_requests": requests, "counters": per_node}

    def stop_nodes(self) -> None:
        for d in self.nodes:
            with contextlib.suppress(Exception):
                d.stop()
            d.notify.close()
            with contextlib.suppress(ValueError):
                self.procs.started.remove(d.proc)
        self.nodes = []


async def wait_until(
    procs: Procs, netns: str, probe: list[str], server: Any, what: str, limit: float = 30.0
) -> None:
    """Poll ``probe`` until it succeeds: a server that gives no readiness signal of its own."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"{what} exited with {server.returncode}")
        try:
            await procs.run(netns, probe, 5.0)
            return
        except RuntimeError:
            if loop.time() > deadline:
                raise RuntimeError(f"{what} did not answer within {limit:.0f} s") from None
        await asyncio.sleep(0.1)
