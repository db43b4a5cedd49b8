"""The daemon raises its open-file soft limit (peerdistd/file_limit.py): a systemd service
starts at 1,024, and the block cache alone may keep 1,024 segment files open."""

from __future__ import annotations

import resource
from pathlib import Path

from peerdistd.file_limit import WANTED, raise_file_limit
from tests.harness import start_daemon


def _max_open_files(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def test_a_daemon_started_at_a_low_soft_limit_raises_it_towards_the_hard_one(
    tmp_path: Path,
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = WANTED if hard == resource.RLIM_INFINITY else min(WANTED, hard)

    def low() -> None:  # what a systemd service starts with (soft 1,024), lower still here
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    d = start_daemon(tmp_path, preexec=low)
    try:
        assert _max_open_files(d.proc.pid)[0] == expected
    finally:
        d.stop()
        d.notify.close()


def test_the_limit_is_never_lowered_nor_raised_past_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert raise_file_limit(wanted=16) == soft  # already above: left alone
        if hard != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 64), hard))
            assert raise_file_limit(wanted=hard + 1000) == hard
            assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
