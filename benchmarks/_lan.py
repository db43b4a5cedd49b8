"""A branch office made of network namespaces: the LAN, a shaped WAN link, the processes in it.

One namespace per host, each with one veth (``eth0``) on a bridge in a namespace of its own
(``tests/netns.py``: ULA addresses from a /64 that nothing on this machine uses, so no packet
ever leaves the namespaces we make). Host 1 is the origin: its link is the WAN, shaped with tc
in both directions (``tbf`` at ``--mbit``, optionally with ``netem`` delay under it); the bytes
the origin puts on that link are read from its own ``eth0`` transmit counter. Host 2 is the
caching box (nginx), hosts 3.. are the clients. Every process started here is remembered and
killed when the block ends, whatever ended it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.netns import BridgedLan, Host, bridged_lan

ORIGIN_PORT = 8000
CACHE_PORT = 3128
PEER_PORT = 8080


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def tc(netns: str, *args: str) -> None:
    cmd = ["ip", "netns", "exec", netns, "tc", *args]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)} in {netns}: {done.stderr.strip()}")


def shape(netns: str, dev: str, mbit: float, delay_ms: float) -> None:
    """Egress of ``dev``: a token bucket at ``mbit`` (tc-tbf(8)); with ``delay_ms``, netem under
    it adds the one-way delay. The bucket (64 KiB) holds one GSO packet of a veth, so tbf never
    has to split one; 50 ms of queue before tbf drops, as a WAN router's buffer would."""
    tbf = f"qdisc replace dev {dev} root handle 1: tbf rate {mbit}mbit burst 64kb latency 50ms"
    tc(netns, *tbf.split())
    if delay_ms > 0:
        tc(netns, *f"qdisc add dev {dev} parent 1:1 handle 10: netem delay {delay_ms}ms".split())


@dataclass(frozen=True, slots=True)
class Branch:
    lan: BridgedLan
    mbit: float
    delay_ms: float

    @property
    def origin(self) -> Host:
        return self.lan.hosts[0]

    @property
    def cache(self) -> Host:
        return self.lan.hosts[1]

    @property
    def clients(self) -> tuple[Host, ...]:
        return self.lan.hosts[2:]

    def wan_tx_bytes(self) -> int:
        """Bytes the origin has put on its link (its eth0's transmit counter, rtnetlink)."""
        return link_stats(self.origin)["tx"]["bytes"]

    def origin_url(self, name: str) -> str:
        return f"http://[{self.origin.address}]:{ORIGIN_PORT}/{name}"

    def cache_url(self, name: str) -> str:
        return f"http://[{self.cache.address}]:{CACHE_PORT}/{name}"


def link_stats(host: Host) -> dict[str, dict[str, int]]:
    (link,) = json.loads(ip("-n", host.netns, "-s", "-j", "link", "show", host.ifname))
    return dict(link["stats64"])


@contextlib.contextmanager
def branch(clients: int, mbit: float, delay_ms: float) -> Iterator[Branch]:
    """The origin, the cache box and ``clients`` client hosts; the origin's link shaped."""
    with bridged_lan(2 + clients) as lan:
        origin = lan.hosts[0]
        shape(origin.netns, origin.ifname, mbit, delay_ms / 2)
        # The bridge's port of the origin link (p1, tests/netns.py): the upstream direction.
        shape(lan.bridge_netns, "p1", mbit, delay_ms / 2)
        yield Branch(lan, mbit, delay_ms)


def snmp(netns: str) -> dict[str, int]:
    """The kernel's protocol counters in ``netns`` (/proc/net/snmp as ``Udp:RcvbufErrors``...,
    /proc/net/snmp6 as ``Udp6RcvbufErrors``...): IPv4 and IPv6 are counted apart."""
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/snmp", "/proc/net/snmp6"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found: dict[str, int] = {}
    heads: dict[str, list[str]] = {}
    for line in out.splitlines():
        words = line.split()
        if len(words) < 2:
            continue
        if words[0].endswith(":"):  # snmp: a line of names, then a line of values
            if words[0] not in heads:
                heads[words[0]] = words[1:]
            else:
                for name, value in zip(heads[words[0]], words[1:], strict=False):
                    with contextlib.suppress(ValueError):
                        found[words[0] + name] = int(value)
        else:
            with contextlib.suppress(ValueError):
                found[words[0]] = int(words[1])
    return found


def udp_drops(netns: str) -> int:
    """Datagrams dropped for full socket buffers in ``netns`` (IPv4 + IPv6 RcvbufErrors):
    discovery probes and answers a daemon never saw."""
    got = snmp(netns)
    return got.get("Udp:RcvbufErrors", 0) + got.get("Udp6RcvbufErrors", 0)


def tcp_retransmits(netns: str) -> int:
    """TCP segments sent again from ``netns`` (IPv4 and IPv6 share this counter)."""
    return snmp(netns).get("Tcp:RetransSegs", 0)


class Overtime(RuntimeError):
    """A command ran past its limit (and was killed)."""


@dataclass
class Procs:
    """Processes started in namespaces; all killed by :meth:`kill_all` (the finally of a run)."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    running: list[asyncio.subprocess.Process] = field(default_factory=list)

    def popen(self, netns: str, cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, *cmd], stdout=out, stderr=subprocess.STDOUT
            )
        self.started.append(proc)
        return proc

    async def run(
        self, netns: str, cmd: Sequence[str], limit: float, gate: asyncio.Barrier | None = None
    ) -> tuple[float, float, str]:
        """Run ``cmd`` in ``netns`` to its end: (started at, seconds taken, its output).

        With ``gate``, the process is made first (``ip netns exec`` and a shell waiting on its
        stdin) and ``cmd`` starts once every party of the barrier is there too: N clients
        then start within a millisecond of each other, not one fork after another.
        """
        if gate is not None:
            cmd = ["sh", "-c", 'read -r _ && exec "$@"', "sh", *cmd]
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            "ip",
            "netns",
            "exec",
            netns,
            *cmd,
            stdin=asyncio.subprocess.PIPE if gate else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self.running.append(proc)
        try:
            if gate is not None:
                assert proc.stdin is not None
                await gate.wait()
                started = time.perf_counter()
                proc.stdin.write(b"go\n")
                proc.stdin.close()
            output, _ = await asyncio.wait_for(proc.communicate(), limit)
        except TimeoutError:
            raise Overtime(f"{cmd[0]} in {netns} took over {limit:.0f} s") from None
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            self.running.remove(proc)
        took = time.perf_counter() - started
        text = output.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} in {netns} failed ({proc.returncode}): {text}")
        return started, took, text

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self.started.remove(proc)

    def kill_all(self) -> None:
        for aproc in self.running:
            with contextlib.suppress(ProcessLookupError):
                aproc.kill()
        for proc in list(self.started):
            self.stop(proc, 5.0)
