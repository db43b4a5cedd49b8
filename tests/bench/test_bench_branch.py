"""The branch benchmark (``benchmarks/bench_branch.py``) keeps running: its quick mode, end to end.

Network namespaces, tc, real daemons, ``peerdist origin``, nginx when it is installed (the test
never installs it: ``--no-install``). Only that every row ran and every client's bytes equal the
origin file is asserted; timings and WAN factors are the benchmark's findings, never a test's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import netns_unavailable

REPO = Path(__file__).resolve().parents[2]


def _unavailable() -> str | None:
    for tool in ("tc", "curl"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return netns_unavailable()


@pytest.mark.timeout(300)
def test_quick_branch_benchmark_runs_and_every_client_gets_the_file(tmp_path: Path) -> None:
    why = _unavailable()
    if why:
        pytest.skip(why)
    out = tmp_path / "branch.json"
    # A fast WAN and a small LAN part: what is checked here does not depend on speed.
    cmd = [sys.executable, "-m", "benchmarks.bench_branch", "--quick", "--no-install",
           "--mbit", "1000", "--lan-size", "4M", "--json", str(out)]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    rows = doc["rows"]
    ran = {row["way"] for row in rows}
    expected = {"direct", "peerdistd"} | ({"nginx"} if not doc["unavailable"]["nginx"] else set())
    assert ran == expected, doc["unavailable"]
    shapes = {(row["way"], row["clients"], row["mode"]) for row in rows}
    assert ("peerdistd", 3, "at once") in shapes
    assert ("peerdistd", 3, "one after another") in shapes
    for row in rows:
        assert row["ok"], row  # every client's bytes matched the origin file's SHA-256
        assert len(row["seconds"]) == row["clients"]
        assert row["wan_bytes"] > 0
    assert doc["lan"]["ok"], doc["lan"]
    assert "!!! FAILED" not in done.stdout
