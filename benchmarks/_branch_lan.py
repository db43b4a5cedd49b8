"""LAN speed, the branch benchmark's last part: one content from one peerdistd node to another
against a plain HTTP download of the same file between the same two namespaces (goal >= 0.5x).

Node A (first client host) publishes the file; node B (second client host, empty cache) runs
``peerdist fetch --content-info`` for it, so every block comes from A over PCCRD + PCCRR. The
limit is ``curl`` on B downloading the file from an aiohttp server on A (sendfile, the plainest
HTTP there is: ``benchmarks/_nodes.py``). Both write their output to the same disk. Each
content information version gets a fresh node B; a fetch still running after ``limit`` seconds
is stopped and its speed taken from the bytes it had written (a default run stays short even
where the peer path is very slow).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks._lan import PEER_PORT, Overtime
from benchmarks._nodes import PlainServer, counters, write_random
from benchmarks._ways import NODE_ENV, PEERDIST, curl, sha256
from tests.harness import DaemonProcess, start_daemon
from tests.netns import Host

if TYPE_CHECKING:
    from benchmarks.bench_branch import Bench

GOAL = 0.5


async def lan_speed(b: Bench, size: int, versions: list[int], limit: float) -> dict[str, Any]:
    a_host, b_host = b.lan.clients[:2]
    name = f"lan-{size}.bin"
    path = await asyncio.to_thread(write_random, b.www / name, size)
    expected = await asyncio.to_thread(sha256, path)
    where = b.root / "lan"
    result: dict[str, Any] = {"size": size, "ok": False, "runs": []}
    lines = []
    a: DaemonProcess | None = None
    try:
        a = _node(b, where, a_host, "a")
        out = where / "plain.out"
        with PlainServer.start(path, host=str(a_host.address), netns=a_host.netns) as plain:
            port = plain.where.rpartition(":")[2]
            url = f"http://[{a_host.address}]:{port}/file"
            _, plain_s, _ = await b.procs.run(b_host.netns, curl(url, out), 900)
        if await asyncio.to_thread(sha256, out) != expected:
            raise RuntimeError("plain HTTP: bytes differ from the file")
        out.unlink()
        result.update(plain_s=plain_s, plain_mb_s=size / plain_s / 1e6)
        for version in versions:
            run = await _peer_run(b, where, a, path, name, version, limit, expected)
            run["ratio"] = run["peerdistd_mb_s"] / result["plain_mb_s"]
            result["runs"].append(run)
            lines.append(
                f"{size / 2**20:.0f} MiB V{version} A->B: peerdistd"
                f" {run['peerdistd_mb_s']:.1f} MB/s ({run['note']}) vs plain HTTP"
                f" {result['plain_mb_s']:.0f} MB/s ({plain_s:.1f} s): {run['ratio']:.3f}x"
                f" (goal >= {GOAL}x); {run['discovery_attempts']} reads waited for discovery"
                f" ({run['probes_sent']} probes),"
                f" WAN {run['wan_bytes'] / 2**20:.1f} MiB"
                + ("" if run["ok"] else f"; FAILED: {run['error']}")
            )
        result["ok"] = all(run["ok"] for run in result["runs"])
        if not result["ok"]:
            result["error"] = "; ".join(r["error"] for r in result["runs"] if not r["ok"])
    except Exception as exc:  # reported as a failure; the table above still prints
        result["error"] = f"{type(exc).__name__}: {exc}"
        lines.append(f"FAILED: {result['error']}")
    finally:
        if a is not None:
            _stop(b, a)
        (b.www / name).unlink(missing_ok=True)
    result["summary"] = "\n              ".join(lines)
    return result


async def _peer_run(
    b: Bench,
    where: Path,
    a: DaemonProcess,
    path: Path,
    name: str,
    version: int,
    limit: float,
    expected: bytes,
) -> dict[str, Any]:
    """A publishes ``path`` as V``version``; a fresh B fetches it from A alone."""
    a_host, b_host = b.lan.clients[:2]
    ci = where / f"lan-v{version}.ci"
    publish = [PEERDIST, "publish", str(path), "--id", f"lan-v{version}", "--version",
               str(version), "--content-info", str(ci), "--socket", str(a.socket)]  # fmt: skip
    _, publish_s, _ = await b.procs.run(a_host.netns, publish, 900)
    node_b = _node(b, where, b_host, f"b{version}")
    out = where / f"b{version}.out"
    run: dict[str, Any] = {"version": version, "publish_s": publish_s, "ok": False}
    try:
        wan0 = b.lan.wan_tx_bytes()
        fetch = [PEERDIST, "fetch", "--content-info", str(ci), "--origin", b.lan.origin_url(name),
                 "--socket", str(node_b.socket), "-o", str(out)]  # fmt: skip
        started = time.perf_counter()
        try:
            _, peer_s, run["fetch_output"] = await b.procs.run(b_host.netns, fetch, limit)
        except Overtime:  # killed: its partial output tells how far it got
            peer_s = time.perf_counter() - started
            part = out.with_name(out.name + ".part")
            moved = part.stat().st_size if part.exists() else 0
            part.unlink(missing_ok=True)
            run.update(stopped_after_s=peer_s, bytes_done=moved, ok=True)
            run["note"] = f"stopped after {peer_s:.0f} s at {moved / 2**20:.0f} MiB"
        else:
            moved = (await asyncio.to_thread(path.stat)).st_size
            run["ok"] = await asyncio.to_thread(sha256, out) == expected
            if not run["ok"]:
                run["error"] = f"V{version}: bytes differ from the file"
            out.unlink()
            run["note"] = f"{peer_s:.1f} s"
        got = await counters(node_b)
        run.update(
            peerdistd_s=peer_s,
            peerdistd_mb_s=moved / peer_s / 1e6,
            wan_bytes=b.lan.wan_tx_bytes() - wan0,
            discovery_attempts=int(got.get("discovery_attempts", 0)),
            probes_sent=int(got.get("probes_sent", 0)),
            counters_b=got,
        )
    finally:
        _stop(b, node_b)
    return run


def _node(b: Bench, where: Path, host: Host, label: str) -> DaemonProcess:
    listen = ["--listen", host.endpoint(PEER_PORT)]
    d = start_daemon(where, *listen, name=label, netns=host.netns, env=NODE_ENV)
    b.procs.started.append(d.proc)  # killed with the rest, whatever ends the run
    return d


def _stop(b: Bench, d: DaemonProcess) -> None:
    with contextlib.suppress(Exception):
        d.stop()
    d.notify.close()
    with contextlib.suppress(ValueError):
        b.procs.started.remove(d.proc)
