"""Two daemons on one host (the system service and ``make run``): the embedded default metrics
port already taken turns metrics off with a warning instead of failing the start; a port the
admin chose must still be served, or the start fails naming metrics.listen."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import start_daemon

# The other daemon's metrics endpoint: a listener on the default port, in the namespace.
HOLD_PORT = (
    "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 9595)); s.listen(); "
    "print('listening', flush=True); sys.stdin.read()"
)


@pytest.fixture
def default_port_taken(netns: str) -> Iterator[str]:
    holder = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", HOLD_PORT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "listening\n"
        yield netns
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(20)
        holder.stdout.close()


async def test_the_default_port_taken_turns_metrics_off(
    default_port_taken: str, tmp_path: Path
) -> None:
    # No --metrics: the embedded default 127.0.0.1:9595, which the other daemon holds.
    d = start_daemon(tmp_path, netns=default_port_taken, metrics=None)
    try:
        async with d.session() as api, api.get("/v1/status") as resp:
            assert resp.status == 200
            assert "metrics" not in (await resp.json())["listen"]
    finally:
        assert d.stop() == 0
        d.notify.close()
    warnings = [line for line in d.output().splitlines() if "metrics off" in line]
    assert len(warnings) == 1
    assert "127.0.0.1:9595" in warnings[0]
    assert "set metrics.listen to a free port" in warnings[0]


def test_a_chosen_port_taken_fails_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="daemon exited with 2") as failed:
            start_daemon(tmp_path, metrics=f"127.0.0.1:{port}")
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}" in str(failed.value)
