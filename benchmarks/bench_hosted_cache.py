"""Offers to a hosted cache, against a plain PCCRR read of the same bytes between the same nodes.

HC (127.0.0.1, hosted cache, v1.0 offers over HTTPS) and A (127.0.0.2, a client of HC) run in a
network namespace of our own. A publishes the content; each segment it completes is offered
(INITIAL_OFFER, SEGMENT_INFO) and HC pulls and verifies its blocks from A with PCCRR. The
figure is the time from the start of the publish until HC holds every block. The limit is HC
itself reading the same content from A with 1 MiB stream reads (PCCRD + PCCRR, verified,
cached), its cache emptied first.

``python -m benchmarks hosted_cache`` or
``python -m benchmarks.bench_hosted_cache [--size 1G] [--offer-version 1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from benchmarks._nodes import (
    CHUNK,
    counters,
    mib,
    namespace,
    open_content,
    parse_size,
    publish,
    run,
    scratch,
    write_random,
)
from peerdistd.proto.pccrc import ContentInformation
from tests.harness import DaemonProcess, netns_unavailable, start_daemon

CACHE_LIMIT = str(16 << 30)


def start(root: Path, netns: str, name: str, address: str, env: dict[str, str]) -> DaemonProcess:
    full = {"PEERDISTD_CACHE_LIMIT_BYTES": CACHE_LIMIT, "PEERDISTD_PEERS_ZEROCONF": "false"}
    return start_daemon(
        root, "--listen", f"{address}:8080", name=name, netns=netns, env={**full, **env}
    )


async def held(hc: DaemonProcess, key: str) -> float:
    return (await counters(hc)).get(key, 0.0)


async def read_all(d: DaemonProcess, ci: bytes) -> float:
    """Seconds for ``d`` to stream-read the whole content from an empty cache."""
    async with d.session() as api:
        async with api.delete("/v1/cache") as r:
            r.raise_for_status()
        h = await open_content(api, ci)
        started = time.perf_counter()
        while True:
            async with api.post(
                f"/v1/contents/{h}/stream-read", params={"max": str(CHUNK), "timeout_ms": "5000"}
            ) as r:
                if r.status == 416:
                    break
                if r.status != 200:
                    raise RuntimeError(f"stream-read: {r.status} {await r.text()}")
                await r.read()
        return time.perf_counter() - started


async def bench(args: argparse.Namespace, root: Path, netns: str) -> None:
    path = write_random(root / "content.bin", args.size)
    hc = start(
        root,
        netns,
        "hc",
        "127.0.0.1",
        {
            "PEERDISTD_HOSTED_CACHE_ENABLED": "true",
            "PEERDISTD_HOSTED_CACHE_LISTEN": "127.0.0.1:8443",
        },
    )
    a = start(
        root,
        netns,
        "a",
        "127.0.0.2",
        {
            "PEERDISTD_HOSTED_CACHE_SERVER": "127.0.0.1:8443",
            "PEERDISTD_HOSTED_CACHE_SERVER_V2_PORT": "8080",
            "PEERDISTD_HOSTED_CACHE_CA_FILE": str(root / "hc-state" / "hosted-cache-cert.pem"),
            "PEERDISTD_HOSTED_CACHE_OFFER_VERSION": str(args.offer_version),
        },
    )
    try:
        started = time.perf_counter()
        ci, published = await publish(a, path, "bench")
        blocks = len(list(ContentInformation.parse(ci).blocks()))
        key = (
            "hosted_cache_blocks_pulled"
            if args.offer_version == 1
            else "hosted_cache_unverified_blocks"
        )
        while await held(hc, key) < blocks:  # noqa: ASYNC110 - another process's counter
            await asyncio.sleep(0.05)
        offered = time.perf_counter() - started
        bad = await held(hc, "hosted_cache_bad_blocks")
        plain = await read_all(hc, ci)
        served = (await counters(a))["bytes_served_to_peers"]
    finally:
        for d in (a, hc):
            d.stop()
            d.notify.close()
    size = args.size
    rows = (
        ("HC holds it all, from publish start", offered),
        ("plain PCCRR read HC <- A, 1 MiB reads", plain),
    )
    print(f"   {mib(size)} published on A ({published:.1f} s), offered (v{args.offer_version}.0):")
    for label, took in rows:
        print(f"   {label:40}: {took:6.1f} s  {size / took / 1e6:6.0f} MB/s")
    print(
        f"   ratio (offer path / plain read): {plain / offered:.2f}x; bad blocks {bad:.0f};"
        f" A served {mib(served)} in all"
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_hosted_cache", description=__doc__)
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="content size (1G)")
    parser.add_argument("--offer-version", type=int, choices=(1, 2), default=1)
    args = parser.parse_args(argv)
    why = netns_unavailable()
    if why:
        print(f"   skipped: it {why}")
        return
    with scratch("hosted") as root, namespace() as netns:
        run(bench(args, root, netns))


if __name__ == "__main__":
    main(sys.argv[1:])
