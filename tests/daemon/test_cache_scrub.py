"""Corrupt bytes on disk are found (issue 8, finding 4): ``peerdist cache verify`` (root) and
the background scrub re-hash cached blocks, report the one with a flipped byte and drop it, so
it is never served again; status and metrics count it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.content import BLOCK, content
from tests.daemon.durability import Ledger, check_publication, publish
from tests.daemon.test_api_owners_and_bad_input import NOBODY, as_uid
from tests.harness import DaemonProcess, start_daemon

SIZE = 2 * (1 << 20) + 123
SEED = 7
FLIPPED = 5 * BLOCK + 77  # a byte of block 5 of the first segment
PEERDIST = [sys.executable, "-c", "import sys; from peerdistd.cli import main; sys.exit(main())"]
WAIT = 60.0


def _flip(d: DaemonProcess) -> None:
    """Flip one byte of the only segment file, behind the daemon's back."""
    (path,) = (d.root / "node-cache" / "blocks" / "data").rglob("*.seg")
    with path.open("r+b") as f:
        f.seek(FLIPPED)
        byte = f.read(1)
        f.seek(FLIPPED)
        f.write(bytes([byte[0] ^ 0x40]))


async def _read(api: aiohttp.ClientSession) -> Ledger:
    """Read the publication back from the cache only: what is lost, what is wrong."""
    ledger = Ledger()
    await check_publication(api, ledger, "scrubbed", SEED, SIZE)
    return ledger


async def _blocks(api: aiohttp.ClientSession) -> int:
    async with api.get("/v1/cache") as r:
        return int((await r.json())["blocks"])


@pytest.fixture
def shared_daemon() -> Iterator[DaemonProcess]:
    if os.geteuid() != 0:
        pytest.skip("needs root to call the daemon as a second uid (CI runs as root)")
    root = Path(tempfile.mkdtemp(prefix="peerdistd-verify-"))
    root.chmod(0o755)
    d = start_daemon(
        root,
        env={"PEERDISTD_DAEMON_SOCKET_MODE": "0666", "PEERDISTD_CACHE_SCRUB_BYTES_PER_SECOND": "0"},
    )
    yield d
    d.stop()
    d.notify.close()
    shutil.rmtree(root, ignore_errors=True)


async def test_cache_verify_reports_and_drops_a_flipped_byte(shared_daemon: DaemonProcess) -> None:
    d = shared_daemon
    async with d.session() as api:
        assert await publish(api, "scrubbed", content(SIZE, SEED)) == 201
        held = await _blocks(api)
        _flip(d)
        denied = as_uid(NOBODY, "POST", "/v1/cache/verify", d.socket)
        assert denied["status"] == 403 and "ACCESS_DENIED" in denied["body"]
        cli = [*PEERDIST, "cache", "verify", "--socket", str(d.socket)]
        first = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True)
        assert first.returncode == 1, first.stderr
        assert f"checked {held} blocks" in first.stdout and ": 1 bad (64.0 KiB" in first.stdout
        assert await _blocks(api) == held - 1
        ledger = await _read(api)
        assert (ledger.lost, ledger.wrong) == (BLOCK, 0), ledger.problems  # missing, not wrong
        again = await asyncio.to_thread(subprocess.run, cli, capture_output=True, text=True)
        assert again.returncode == 0 and ": 0 bad" in again.stdout, again.stdout


async def test_background_scrub_finds_a_flipped_byte(tmp_path: Path) -> None:
    d = start_daemon(tmp_path, env={"PEERDISTD_CACHE_SCRUB_BYTES_PER_SECOND": str(256 << 20)})
    try:
        async with d.session() as api:
            assert await publish(api, "scrubbed", content(SIZE, SEED)) == 201
            _flip(d)
            deadline = time.monotonic() + WAIT
            while True:  # the observable change: status counts the bad block
                async with api.get("/v1/status") as r:
                    scrub = (await r.json())["scrub"]
                if scrub["bad_blocks"] or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert scrub["bad_blocks"] == 1, scrub
            assert scrub["bytes_per_second"] == 256 << 20
            ledger = await _read(api)
            assert (ledger.lost, ledger.wrong) == (BLOCK, 0), ledger.problems
            async with api.get("/v1/status") as r:
                status = await r.json()
            assert status["counters"]["scrub_bad_blocks"] == 1
            assert status["status"] == "AVAILABLE"
        assert d.output().count("does not match its hash; dropped") == 1
    finally:
        d.stop()
        d.notify.close()
