"""``peerdist fetch`` when things go wrong, against a real daemon (no peers) and an origin on
loopback: a range the origin cuts is asked again from where it broke; SIGTERM cleans up like
Ctrl-C (no OUT.part, no OUT); without a daemon the URL is downloaded plainly, with a warning."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.clitools import PEERDIST, RawOrigin, cli_env, listing, short_dir
from tests.content import content, content_information
from tests.harness import DaemonProcess, start_daemon

DATA = content(4 * (1 << 20) - 4321, seed=31)  # every piece longer than CUT
CUT = 300_000  # bytes of the first answer before the origin drops the connection


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with short_dir() as root:
        d = start_daemon(root)
        try:
            yield d
        finally:
            d.stop()
            d.notify.close()


async def peerdist(*argv: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *PEERDIST,
        *argv,
        env=cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def fresh_content_info(tmp_path: Path, seed: int) -> tuple[bytes, Path]:
    """Content no daemon of this module has seen, and its content information in a file."""
    data = content(len(DATA), seed=seed)
    ci = tmp_path / "f.ci"
    ci.write_bytes(content_information(data).to_bytes())
    return data, ci


async def test_a_cut_range_is_asked_again_from_where_it_broke(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    data, ci = fresh_content_info(tmp_path, 32)
    out = tmp_path / "out.bin"
    async with RawOrigin(data) as origin:
        origin.cut_after[1] = CUT
        proc = await peerdist(
            "fetch", "--content-info", str(ci), "--origin", origin.url, "-o", str(out),
            "--socket", str(daemon.socket), "--workers", "1",
        )  # fmt: skip
        code, said, err = await finish(proc)
    assert (code, err) == (0, ""), err
    assert out.read_bytes() == data
    # One worker, no peers: from the piece it starts at (a random one: the output is a file),
    # the daemon reports missing what its peer readers have not taken yet, asked for in one
    # range; the first request is the one the origin cuts.
    ranges = [tuple(int(x) for x in r.removeprefix("bytes=").split("-")) for r in origin.ranges]
    first, first_end = ranges[0]
    assert first % (1 << 20) == 0 and first_end >= first + CUT
    # The second request asks for the rest only: what arrived before the cut was kept.
    start, end = ranges[1]
    assert (end, first < start <= first + CUT) == (first_end, True)
    # Then the other pieces, each byte once.
    rest = sorted(ranges[2:])
    covered = sorted([(first, first_end), *rest])
    assert covered[0][0] == 0 and covered[-1][1] == len(data) - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(covered))
    assert f"({len(ranges)} range requests)" in said


async def test_a_range_cut_every_time_fails_in_one_line(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    data, ci = fresh_content_info(tmp_path, 33)
    out = tmp_path / "out.bin"
    async with RawOrigin(data) as origin:
        origin.cut_after.update({n: 1000 for n in range(1, 10)})
        proc = await peerdist(
            "fetch", "--content-info", str(ci), "--origin", origin.url, "-o", str(out),
            "--socket", str(daemon.socket), "--workers", "1",
        )  # fmt: skip
        code, _, err = await finish(proc)
    assert code == 1
    assert len(origin.ranges) == 4  # the first try and three more, then it gives up
    assert err.startswith(f"peerdist: error: origin {origin.url} (bytes ")
    assert "the connection broke before the whole body arrived" in err
    assert "gave up after 4 attempts" in err
    assert err.count("\n") == 1
    assert listing(tmp_path) == ["f.ci"]


async def test_sigterm_leaves_no_part_file(daemon: DaemonProcess, tmp_path: Path) -> None:
    data, ci = fresh_content_info(tmp_path, 34)
    out = tmp_path / "out.bin"
    async with RawOrigin(data) as origin:
        origin.hang_after[1] = 100_000
        proc = await peerdist(
            "fetch", "--content-info", str(ci), "--origin", origin.url, "-o", str(out),
            "--socket", str(daemon.socket),
        )  # fmt: skip
        await asyncio.wait_for(origin.hanging.wait(), 60)
        assert (tmp_path / "out.bin.part").exists()  # opened before the origin was asked
        proc.send_signal(signal.SIGTERM)
        code, _, err = await finish(proc)
    assert (code, err) == (128 + signal.SIGTERM, "")
    assert listing(tmp_path) == ["f.ci"]


async def test_without_a_daemon_the_url_is_downloaded_plainly(tmp_path: Path) -> None:
    data = content(300_000, seed=35)
    out = tmp_path / "out.bin"
    absent = tmp_path / "absent.sock"
    async with RawOrigin(data) as origin:
        proc = await peerdist("fetch", origin.url, "-o", str(out), "--socket", str(absent))
        code, said, err = await finish(proc)
    assert code == 0
    assert out.read_bytes() == data
    assert origin.ranges == [""]  # one plain GET
    assert err == (
        f"peerdist: warning: cannot reach peerdistd at {absent}: No such file or directory; "
        f"downloading {origin.url} directly, without peers or cache\n"
    )
    assert "all from origin, plain HTTP: peerdistd was not reachable" in said


def signal_masks(pid: int) -> dict[str, int]:
    """The SigIgn and SigCgt masks of a process (proc(5)): bit n-1 is signal n."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {
        k: int(v, 16)
        for k, _, v in (line.partition(":\t") for line in lines)
        if k in ("SigIgn", "SigCgt")
    }


async def test_nohup_keeps_sighup_ignored(daemon: DaemonProcess, tmp_path: Path) -> None:
    data, ci = fresh_content_info(tmp_path, 36)
    out = tmp_path / "out.bin"
    async with RawOrigin(data) as origin:
        origin.hang_after[1] = 100_000
        proc = await asyncio.create_subprocess_exec(
            *PEERDIST, "fetch", "--content-info", str(ci), "--origin", origin.url,
            "-o", str(out), "--socket", str(daemon.socket),
            env=cli_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),  # what nohup does
        )  # fmt: skip
        try:
            await asyncio.wait_for(origin.hanging.wait(), 60)  # its handlers are in place now
            masks = signal_masks(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            code, _, _ = await finish(proc)
    assert masks["SigIgn"] >> (signal.SIGHUP - 1) & 1 == 1
    assert masks["SigCgt"] >> (signal.SIGTERM - 1) & 1 == 1
    assert code == 128 + signal.SIGTERM
