"""A node fetching from a peer keeps the memory it moves blocks through (malloc_tuning): with
glibc's defaults every 64 KiB block cost it 20-30 page faults (memory given back to the
kernel between buffers and faulted in again), about a sixth of its CPU per block. Two real
daemons on 127.0.0.1-2 in a network namespace of the test's own."""

from __future__ import annotations

import platform
import random
from pathlib import Path

import pytest

from tests.content import BLOCK
from tests.harness import DaemonProcess
from tests.peers.test_peers_loopback import counters, nodes, publish, read_all

SIZE = 48 * 1024 * 1024
BLOCKS = SIZE // BLOCK


def minor_faults(d: DaemonProcess) -> int:
    fields = Path(f"/proc/{d.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[7])  # minflt (proc(5): field 10)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="tunes glibc's malloc only")
async def test_fetching_from_a_peer_does_not_fault_its_buffers_in_again(
    tmp_path: Path, netns: str
) -> None:
    data = random.Random(98).randbytes(SIZE)
    with nodes(tmp_path, netns, 2) as (a, b):
        ci = await publish(a, data)
        assert await read_all(b, ci) == data  # the daemon's memory grows to its working size
        async with b.session() as api, api.delete("/v1/cache") as r:
            assert r.status == 200
        before = minor_faults(b)
        assert await read_all(b, ci) == data  # the same again, from an empty cache
        faults = minor_faults(b) - before
        assert (await counters(b))["bytes_from_peers"] == 2 * SIZE
    # Measured on 2 shared cores: 1.1-2.5 per block with the settings, 9-17 without.
    assert faults / BLOCKS < 5, f"{faults / BLOCKS:.1f} page faults per block"
