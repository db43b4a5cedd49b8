"""LAN speed, the branch benchmark's last part: one content from one peerdistd node to another
against a plain HTTP download of the same file between the same two namespaces (goal >= 0.5x).

Node A (first client host) publishes the file; node B (second client host, empty cache) runs
``peerdist fetch --content-info`` for it, so every block comes from A over PCCRD + PCCRR. The
limit is ``curl`` on B downloading the file from an aiohttp server on A (sendfile, the plainest
HTTP there is: ``benchmarks/_nodes.py``). Both write their output to the same disk.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from benchmarks._lan import PEER_PORT
from benchmarks._nodes import PlainServer, counters, write_random
from benchmarks._ways import NODE_ENV, PEERDIST, curl, sha256
from tests.harness import DaemonProcess, start_daemon

if TYPE_CHECKING:
    from benchmarks.bench_branch import Bench

GOAL = 0.5


async def lan_speed(b: Bench, size: int, version: int) -> dict[str, Any]:
    a_host, b_host = b.lan.clients[:2]
    name = f"lan-{size}.bin"
    path = await asyncio.to_thread(write_random, b.www / name, size)
    expected = await asyncio.to_thread(sha256, path)
    where = b.root / "lan"
    result: dict[str, Any] = {"size": size, "content_information_version": version, "ok": False}
    nodes: list[DaemonProcess] = []
    try:
        for host, label in ((a_host, "a"), (b_host, "b")):
            listen = ["--listen", host.endpoint(PEER_PORT)]
            nodes.append(start_daemon(where, *listen, name=label, netns=host.netns, env=NODE_ENV))
        a, node_b = nodes
        ci = where / "lan.ci"
        publish = [PEERDIST, "publish", str(path), "--version", str(version),
                   "--content-info", str(ci), "--socket", str(a.socket)]  # fmt: skip
        _, result["publish_s"], _ = await b.procs.run(a_host.netns, publish, 900)
        out = where / "b.out"
        with PlainServer.start(path, host=str(a_host.address), netns=a_host.netns) as plain:
            port = plain.where.rpartition(":")[2]
            url = f"http://[{a_host.address}]:{port}/file"
            _, plain_s, _ = await b.procs.run(b_host.netns, curl(url, out), 900)
        plain_ok = await asyncio.to_thread(sha256, out) == expected
        out.unlink()
        wan0 = b.lan.wan_tx_bytes()
        fetch = [PEERDIST, "fetch", "--content-info", str(ci), "--origin", b.lan.origin_url(name),
                 "--socket", str(node_b.socket), "-o", str(out)]  # fmt: skip
        _, peer_s, text = await b.procs.run(b_host.netns, fetch, 1800)
        peer_ok = await asyncio.to_thread(sha256, out) == expected
        out.unlink()
        got = await counters(node_b)
        result.update(
            plain_s=plain_s,
            peerdistd_s=peer_s,
            plain_mb_s=size / plain_s / 1e6,
            peerdistd_mb_s=size / peer_s / 1e6,
            ratio=plain_s / peer_s,
            wan_bytes=b.lan.wan_tx_bytes() - wan0,
            fetch_output=text,
            counters_b=got,
        )
        if not (plain_ok and peer_ok):
            wrong = "peerdistd" if plain_ok else "plain HTTP"
            result["error"] = f"bytes differ from the file: {wrong}"
        else:
            result["ok"] = True
        result["summary"] = (
            f"{size / 2**20:.0f} MiB V{version} A->B: peerdistd {result['peerdistd_mb_s']:.0f} MB/s"
            f" ({peer_s:.1f} s) vs plain HTTP {result['plain_mb_s']:.0f} MB/s ({plain_s:.1f} s):"
            f" {result['ratio']:.2f}x (goal >= {GOAL}x); from peers"
            f" {got.get('bytes_from_peers', 0) / 2**20:.0f} MiB,"
            f" WAN {result['wan_bytes'] / 2**20:.1f} MiB"
            + ("" if result["ok"] else f"; FAILED: {result['error']}")
        )
    except Exception as exc:  # reported as a failure; the table above still prints
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["summary"] = f"FAILED: {result['error']}"
    finally:
        for d in nodes:
            with contextlib.suppress(Exception):
                d.stop()
            d.notify.close()
        (b.www / name).unlink(missing_ok=True)
    return result
