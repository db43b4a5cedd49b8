"""Schemathesis over the whole OpenAPI document against a real daemon: what it generates from
the schema (valid and invalid requests, every operation, undeclared methods, links between
operations) must get answers the schema describes.

Bounded: a few derandomized examples per operation, so the run is the same every time and
takes seconds. A handle and a publication that exist are handed to the operations that need
them, so reads, add-data and the rest reach the engine instead of stopping at "no such handle".
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.content import BLOCK, content
from tests.harness import DaemonProcess, start_daemon

REPO = Path(__file__).resolve().parents[2]
SERVED = REPO / "peerdistd" / "api" / "openapi.json"
EXAMPLES_PER_OPERATION = 5
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

# Statuses a schema-valid request may get besides the usual ones, where the reason is not in
# the schema's reach: which publications exist (INVALID_PARAMETER, 400), whether a range lies
# inside the content, whether bytes are content information that verifies (INVALID_DATA, 422),
# whether a handle's content information is complete yet, and what a read finds
# (OPERATION_ABORTED, NO_MORE, MISSING_DATA, TIMEOUT).
ACCEPTED = ["2xx", 401, 403, 404, 409, 429]
SEMANTIC = {
    "/v1/publications/{id}": [400],
    "/v1/publications/{id}/content-information": [400],
    "/v1/contents": [422],
    "/v1/contents/{h}/content-information": [400, 422],  # 400: already complete
    "/v1/contents/{h}/content-information/complete": [400, 422],
    "/v1/contents/{h}/stream-read": [410, 416, 424, 504],
    "/v1/contents/{h}/block-read": [410, 416, 424, 504],
    "/v1/contents/{h}/data": [410, 422],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tcp_daemon(tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    port = free_port()
    d = start_daemon(tmp_path, "--api-tcp", f"127.0.0.1:{port}")
    try:
        yield d, f"http://127.0.0.1:{port}"
    finally:
        d.stop()
        d.notify.close()


def config(base_url: str, handle: str, pub_id: str) -> str:
    """schemathesis.toml (TOML basic strings take JSON's escapes)."""
    lines = [
        f"base-url = {json.dumps(base_url)}",
        "request-timeout = 20",
        "max-stream-events = 1",  # /v1/events never ends; its first event is enough
        "workers = 1",
        "color = false",
        "[generation]",
        'mode = "all"',
        f"max-examples = {EXAMPLES_PER_OPERATION}",
        "deterministic = true",
        'database = "none"',
    ]
    for path, extra in SEMANTIC.items():
        lines += [
            "[[operations]]",
            f"include-path = {json.dumps(path)}",
            f"checks.positive_data_acceptance.expected-statuses = {json.dumps(ACCEPTED + extra)}",
        ]
        if "{h}" in path:
            lines.append(f"parameters = {{ h = {json.dumps(handle)} }}")
        elif "{id}" in path:
            lines.append(f"parameters = {{ id = {json.dumps(pub_id)} }}")
    return "\n".join(lines) + "\n"


async def test_schemathesis_finds_nothing(
    tcp_daemon: tuple[DaemonProcess, str], tmp_path: Path
) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    if st is None:
        pytest.fail("schemathesis is a test dependency: pip install -e '.[test]'")
    _, base_url = tcp_daemon
    data = content(3 * BLOCK + 100, seed=81)
    async with aiohttp.ClientSession(base_url=base_url) as api:
        async with api.post("/v1/publications", params={"id": "fixture"}, data=data) as r:
            assert r.status == 201
        async with api.get("/v1/publications/fixture/content-information") as r:
            ci = await r.read()
        async with api.post("/v1/contents", data=ci) as r:
            handle = (await r.json())["handle"]
    toml = tmp_path / "schemathesis.toml"
    toml.write_text(config(base_url, handle, "fixture"))
    run = await asyncio.to_thread(
        subprocess.run,
        [st, "--config-file", str(toml), "run", str(SERVED)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    doc = json.loads(SERVED.read_text())
    operations = sum(m in METHODS for item in doc["paths"].values() for m in item)
    assert f"{operations}/{operations}" in run.stdout  # every operation was selected


async def test_what_the_schema_run_found_on_first_try(
    tcp_daemon: tuple[DaemonProcess, str],
) -> None:
    """The first findings, spelled out: an empty id is refused, a 405 names the allowed
    methods, ``max=0`` says its (empty) body's type, and V2's hash is in the schema."""
    _, base_url = tcp_daemon
    doc = json.loads(SERVED.read_text())
    algorithms = doc["components"]["schemas"]["Publication"]["properties"]["algorithm"]["enum"]
    async with aiohttp.ClientSession(base_url=base_url) as api:
        async with api.post("/v1/publications", params={"id": ""}, data=b"x") as r:
            assert (r.status, (await r.json())["error"]) == (400, "INVALID_PARAMETER")
        async with api.post("/v1/publications", params={"version": "2"}, data=b"y" * 100) as r:
            assert (await r.json())["algorithm"] in algorithms
        async with api.put("/v1/status") as r:
            assert r.status == 405 and set(r.headers["Allow"].split(",")) == {"GET", "HEAD"}
        data = content(BLOCK, seed=82)
        async with api.post("/v1/publications", params={"id": "p"}, data=data) as r:
            assert r.status == 201
        async with api.get("/v1/publications/p/content-information") as r:
            ci = await r.read()
        async with api.post("/v1/contents", data=ci) as r:
            h = (await r.json())["handle"]
        async with api.post(f"/v1/contents/{h}/stream-read", params={"max": "0"}) as r:
            assert r.status == 200 and r.headers["PeerDist-Available"] == str(BLOCK)
            assert r.headers["Content-Type"] == "application/octet-stream"
