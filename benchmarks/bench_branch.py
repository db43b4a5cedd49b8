"""A branch office fetching one file three ways, side by side in one run (issue 9).

Topology (``benchmarks/_lan.py``): one network namespace per host on a bridge, the LAN; the
origin host's link is the WAN, shaped with tc (``--mbit``, default 100; ``--delay-ms``). The
origin is ``peerdist origin DIR`` with its own daemon, peers off. For every row (N clients at
once, or one after another) and every way, on fresh caches:

- direct: each client ``curl``s the file from the origin;
- nginx: each client ``curl``s it through one nginx on the LAN with lancache's ``slice 1m`` +
  ``proxy_cache_lock`` configuration (Debian's package, installed when missing);
- peerdistd: one ``peerdistd serve`` per client host, ``peerdist fetch URL`` (MS-PCCRTP).

Figures: WAN bytes (the origin's eth0 transmit counter) / content size; p50 and max completion
time / one direct download of the same size in the same run; every client's bytes checked
against the file's SHA-256 (a wrong byte fails the row). Then the LAN speed: 1 GiB from one
peerdistd node to another against a plain HTTP download between the same two namespaces.

``python -m benchmarks branch`` (defaults) or ``python -m benchmarks.bench_branch --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from asyncio import Barrier
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks import _branch_report as report
from benchmarks._branch_lan import lan_speed
from benchmarks._lan import ORIGIN_PORT, Branch, Procs, branch, tcp_retransmits, udp_drops
from benchmarks._nodes import REPO, parse_size, run, scratch, write_random
from benchmarks._ways import PEERDIST, Direct, Nginx, Peerdistd, Way, sha256, wait_until
from peerdistd.proto.pccrtp import ProtocolVersion, request_headers
from tests.harness import netns_unavailable, start_daemon

RESULTS = REPO / "benchmarks" / "results" / "branch.json"
MBIT = 1e6 / 8


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path, lan: Branch, procs: Procs) -> None:
        self.args, self.root, self.lan, self.procs = args, root, lan, procs
        self.www = root / "www"
        self.www.mkdir()
        self.origin_log = root / "origin.log"
        self.direct_one: dict[int, float] = {}

    def origin_requests(self) -> int:
        """Requests the origin has answered so far (one log line each, peerdistd/origin.py)."""
        if not self.origin_log.exists():
            return 0
        return sum(" -> " in line for line in self.origin_log.read_text().splitlines())

    async def start_origin(self) -> None:
        host = self.lan.origin
        # The origin's own daemon: no --listen, so start_daemon runs it with --no-peers.
        daemon = start_daemon(self.root, name="origin-daemon", netns=host.netns)
        self.procs.started.append(daemon.proc)
        listen = f"[{host.address}]:{ORIGIN_PORT}"
        cmd = [PEERDIST, "origin", str(self.www), "--listen", listen]
        cmd += ["--socket", str(daemon.socket)]
        proc = self.procs.popen(host.netns, cmd, self.origin_log)
        # Any HTTP answer will do (curl fails only when nothing listens yet).
        probe = ["curl", "-gs", "-o", "/dev/null", self.lan.origin_url("")]
        await wait_until(self.procs, host.netns, probe, proc, "origin")

    async def prepare(self, name: str) -> None:
        """Have the origin make the file's content information before any row is timed
        (its daemon hashes a file on the first peerdist request), from inside the origin host:
        loopback, so it never counts as WAN bytes."""
        version = {v.text: v for v in ProtocolVersion}[self.args.peerdist_version]
        headers = [f"-H{k}: {v}" for k, v in request_headers(version).items()]
        url = self.lan.origin_url(name)
        cmd = ["curl", "-gsS", "-o", "/dev/null", "-D", "-", *headers, url]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            _, _, text = await self.procs.run(self.lan.origin.netns, cmd, 120)
            if "content-encoding: peerdist" in text.lower():
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the origin made no content information for {name}")

    async def row(self, way: Way, size: int, name: str, count: int, together: bool) -> report.Row:
        row = report.Row(way.name, size, count, together, direct_one_s=self.direct_one.get(size))
        where = self.root / f"{way.name}-{size}-{count}-{'t' if together else 's'}"
        where.mkdir()
        outs = [where / f"client{i + 1}.out" for i in range(count)]
        hosts = self.lan.clients[:count]
        limit = 120 + 3 * count * size / (self.args.mbit * MBIT)
        try:
            await way.start(where, count)
            wan0, req0 = self.lan.wan_tx_bytes(), self.origin_requests()
            retrans0 = tcp_retransmits(self.lan.origin.netns)
            drops0 = sum(udp_drops(h.netns) for h in hosts)
            load0 = os.getloadavg()[0]
            # Every client's process is made before its clock starts; at once, all of them.
            gate = Barrier(count) if together else None
            jobs = [
                self.procs.run(h.netns, way.command(i, name, out), limit, gate or Barrier(1))
                for i, (h, out) in enumerate(zip(hosts, outs, strict=True))
            ]
            if together:
                done = await asyncio.gather(*jobs)
            else:
                done = [await job for job in jobs]
            row.wan_bytes = self.lan.wan_tx_bytes() - wan0
            row.origin_requests = self.origin_requests() - req0
            row.origin_retransmits = tcp_retransmits(self.lan.origin.netns) - retrans0
            row.udp_rcvbuf_drops = sum(udp_drops(h.netns) for h in hosts) - drops0
            row.load = (load0, os.getloadavg()[0])
            row.seconds = [took for _, took, _ in done]
            if together:
                starts = [started for started, _, _ in done]
                row.start_spread_ms = (max(starts) - min(starts)) * 1000
            row.extra = await way.finish([text for _, _, text in done])
            expected = sha256(self.www / name)
            wrong = [o.name for o in outs if await asyncio.to_thread(sha256, o) != expected]
            if wrong:
                row.error = f"bytes differ from the origin file: {', '.join(wrong)}"
            else:
                row.ok = True
        except Exception as exc:  # a failed row is reported; the other rows still run
            row.error = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await way.finish([])
        finally:
            shutil.rmtree(where, ignore_errors=True)
        if row.ok and way.name == "direct" and count == 1:
            self.direct_one[size] = max(row.seconds)
        return row


def shapes(args: argparse.Namespace) -> Iterator[tuple[int, int, bool]]:
    """(size, clients, together) of every row, in the order they run. One client always comes
    first when direct runs: one direct download is every other row's yardstick."""
    for size in args.sizes:
        counts = args.clients
        if "direct" in args.ways and 1 not in counts:
            counts = [1, *counts]
        for count in counts:
            if count == 1 or "at-once" in args.modes:
                yield size, count, True
            if count > 1 and "one-after-another" in args.modes:
                yield size, count, False


async def bench(args: argparse.Namespace, root: Path, lan: Branch, procs: Procs) -> int:
    b = Bench(args, root, lan, procs)
    ways: list[Way] = []
    unavailable: dict[str, str | None] = {}
    for name in args.ways:
        way: Way
        if name == "direct":
            way = Direct(lan)
        elif name == "nginx":
            way = Nginx(lan, procs, args.install)
        else:
            way = Peerdistd(lan, procs, args.peerdist_version)
        unavailable[name] = way.unavailable
        if way.unavailable:
            print(f"   {name}: unavailable: {way.unavailable}", flush=True)
        else:
            ways.append(way)
    await b.start_origin()
    names = {}
    for size in args.sizes:
        names[size] = f"content-{size}.bin"
        await asyncio.to_thread(write_random, b.www / names[size], size)
        await b.prepare(names[size])
    rows: list[report.Row] = []
    load0 = os.getloadavg()
    for size, count, together in shapes(args):
        for way in ways:
            if way.name == "direct" and count > 1 and not args.direct_rows:
                continue  # N times one download by construction; --direct-rows measures it
            if way.name != "direct" and count not in args.clients:
                continue  # the yardstick's row, added for direct alone
            r = await b.row(way, size, names[size], count, together)
            rows.append(r)
            print(f"   {report.label(size, count, together):28} {way.name:9}: "
                  f"{report.cell(r, None)}", flush=True)  # fmt: skip
    lan_figures: dict[str, Any] = {}
    if args.lan_size:
        lan_figures = await lan_speed(b, args.lan_size, args.lan_versions, args.lan_limit)
    load1 = os.getloadavg()
    print()
    print(report.table(rows, unavailable))
    print()
    print(report.absolute(rows))
    if lan_figures:
        print(f"   LAN speed: {lan_figures['summary']}")
    print(f"   load average (1, 5, 15 min) before {load0}, after {load1}; {os.cpu_count()} CPUs")
    for line in report.verdict(rows):
        print(f"   goal missed: {line}")
    failed = [r for r in rows if not r.ok]
    if lan_figures and not lan_figures.get("ok"):
        failed.append(report.Row("lan", args.lan_size, 2, False, error=lan_figures.get("error")))
    report.write_json(
        args.json,
        {k: v for k, v in vars(args).items() if k != "json"},
        rows,
        unavailable=unavailable,
        load_before=load0,
        load_after=load1,
        lan=lan_figures,
    )
    print(f"   figures written to {args.json}")
    for r in failed:
        what = report.label(r.size, r.clients, r.together)
        print(f"   !!! FAILED {what} {r.way}: {r.error}", flush=True)
    return 1 if failed else 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_branch", description=__doc__.split("\n\n")[0])

    def sizes(text: str) -> list[int]:
        return [parse_size(t) for t in text.split(",") if t]

    def counts(text: str) -> list[int]:
        return [int(t) for t in text.split(",") if t]

    def versions(text: str) -> list[int]:
        got = [int(t) for t in text.split(",") if t]
        if not got or set(got) - {1, 2}:
            raise argparse.ArgumentTypeError("versions are 1 and/or 2")
        return got

    def words(choices: tuple[str, ...]) -> Any:
        def parse(text: str) -> list[str]:
            got = [t for t in text.split(",") if t]
            if bad := [t for t in got if t not in choices]:
                raise argparse.ArgumentTypeError(f"not one of {','.join(choices)}: {bad}")
            return got

        return parse

    add = parser.add_argument
    add("--sizes", type=sizes, default=[128 << 20], help="content sizes (128M)")
    add("--big", action="store_true", help="add the 1 GiB rows (long: ~2 min per direct 1 GiB)")
    add("--clients", type=counts, default=[1, 5, 10], help="client counts per row (1,5,10)")
    add("--twenty", action="store_true", help="add the 20-client rows")
    add("--modes", type=words(("at-once", "one-after-another")),
        default=["at-once", "one-after-another"], help="row kinds (both)")  # fmt: skip
    add("--ways", type=words(report.WAYS), default=list(report.WAYS), help="(all three)")
    add("--direct-rows", action="store_true", help="also measure direct for N > 1 (N x by itself)")
    add("--mbit", type=float, default=100.0, help="WAN link rate, Mbit/s (100)")
    add("--delay-ms", type=float, default=0.0, help="WAN round-trip delay, ms (0)")
    add("--peerdist-version", choices=("1.0", "1.1"), default="1.1",
        help="what peerdist fetch speaks to the origin: 1.1 gets V2, 1.0 V1 (1.1)")  # fmt: skip
    add("--lan-size", type=parse_size, default=1 << 30, help="LAN speed test size, 0: skip (1G)")
    add("--lan-versions", type=versions, default=[1, 2], help="its content info versions (1,2)")
    add("--lan-limit", type=float, default=60.0, help="stop a LAN fetch after S s (60)")
    add("--no-install", dest="install", action="store_false", help="never apt-get nginx")
    add("--quick", action="store_true", help="smoke run: 16 MiB, N=1,3, LAN 16 MiB")
    add("--json", type=Path, default=RESULTS, help=f"figures as JSON ({RESULTS.relative_to(REPO)})")
    args = parser.parse_args(argv)
    if args.quick:  # new defaults; what the command line says still wins
        parser.set_defaults(sizes=[16 << 20], clients=[1, 3], lan_size=16 << 20)
        args = parser.parse_args(argv)
    if args.big and (1 << 30) not in args.sizes:
        args.sizes.append(1 << 30)
    if args.twenty and 20 not in args.clients:
        args.clients.append(20)
    if not args.clients or min(args.clients) < 1 or max(args.clients) > 200:
        parser.error("--clients: counts from 1 to 200")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    why = netns_unavailable() or (None if shutil.which("tc") else "needs iproute2's tc")
    if why:
        print(f"   skipped: it {why}")
        return 0
    # SIGTERM too unwinds through every finally below: namespaces and processes go.
    signal.signal(signal.SIGTERM, _interrupt)
    procs = Procs()
    hosts = max(2, *args.clients)
    print(
        f"   {len(args.sizes)} size(s), clients {args.clients}, WAN {args.mbit:g} Mbit/s"
        f" (+{args.delay_ms:g} ms), ways {','.join(args.ways)}, load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    with scratch("bench-branch") as root, branch(hosts, args.mbit, args.delay_ms) as lan:
        try:
            return int(run(bench(args, root, lan, procs)))
        finally:
            procs.kill_all()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
