"""examples/tour.sh, run as the README says (issue 11, item 11): a relative FILE means the
caller's file, the fetch runs inside the tour's namespace and gets every byte from node A."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import netns_unavailable

REPO = Path(__file__).resolve().parents[2]
TOUR = REPO / "examples" / "tour.sh"
TOUR_TIMEOUT = 300


@pytest.fixture(autouse=True)
def _tour_can_run() -> None:
    why = netns_unavailable()
    if why:
        pytest.skip(why)
    if not (REPO / ".venv" / "bin" / "peerdistd").exists():
        pytest.skip("the tour would run `make venv` first (network, minutes): no .venv here")


def _tour_processes() -> set[int]:
    """Processes whose command line names a tour's work directory (its daemons, origin)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"/tmp/peerdist-tour." in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return found


def test_tour_with_a_relative_file(tmp_path: Path) -> None:
    data = random.Random(111).randbytes(3_000_000)
    (tmp_path / "mine.bin").write_bytes(data)
    assert not (REPO / "mine.bin").exists()
    before = _tour_processes()
    try:
        done = subprocess.run(
            [str(TOUR), "mine.bin"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TOUR_TIMEOUT,
            check=False,
        )
    finally:
        made_up = (REPO / "mine.bin").exists()  # what the tour once did with a relative FILE
        (REPO / "mine.bin").unlink(missing_ok=True)
    assert not made_up
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== identical" in done.stdout
    assert "from peers, 0 B from origin (0 range requests)" in done.stdout, done.stdout
    assert (tmp_path / "mine.bin").read_bytes() == data  # the caller's file, untouched
    # The tour stops what it started: its daemons once outlived it (run under `ip netns
    # exec` in subshells, they were not the jobs it killed).
    assert _tour_processes() - before == set()


def test_tour_refuses_a_missing_file(tmp_path: Path) -> None:
    assert not (REPO / "missing.bin").exists()
    try:
        done = subprocess.run(
            [str(TOUR), "missing.bin"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=TOUR_TIMEOUT,
            check=False,
        )
    finally:
        made_up = (REPO / "missing.bin").exists()  # once filled with random data
        (REPO / "missing.bin").unlink(missing_ok=True)
    assert not made_up
    assert (done.returncode, done.stderr) == (2, "tour: missing.bin is not a readable file\n")
    assert not (tmp_path / "missing.bin").exists()


def test_tour_makes_the_venv_it_needs(tmp_path: Path) -> None:
    # A checkout without .venv whose `make venv` only leaves a peerdistd that cannot start:
    # the tour runs make venv itself, then says which node did not start.
    checkout = tmp_path / "checkout"
    (checkout / "examples").mkdir(parents=True)
    shutil.copy(TOUR, checkout / "examples" / "tour.sh")
    (checkout / "Makefile").write_text(
        "venv:\n\tmkdir -p .venv/bin\n"
        "\tprintf '#!/bin/sh\\necho not really >&2\\nexit 1\\n' > .venv/bin/peerdistd\n"
        "\tcp .venv/bin/peerdistd .venv/bin/peerdist\n"
        "\tchmod +x .venv/bin/peerdistd .venv/bin/peerdist\n"
    )
    (tmp_path / "f.bin").write_bytes(b"x" * 1000)
    env = {k: v for k, v in os.environ.items() if k != "SUDO_USER"}
    done = subprocess.run(
        [str(checkout / "examples" / "tour.sh"), str(tmp_path / "f.bin")],
        capture_output=True,
        text=True,
        timeout=TOUR_TIMEOUT,
        check=False,
        env=env,
    )
    assert done.stdout.startswith("== no .venv yet: make venv\n"), done.stdout
    assert (checkout / ".venv" / "bin" / "peerdistd").exists()
    assert done.returncode == 1
    assert done.stderr == "tour: a did not start:\nnot really\n", done.stderr
