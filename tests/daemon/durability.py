"""What a client was promised, and checking a daemon keeps it (issue 8, "durable before
acknowledged"): publications answered 201 and data answered 200 are remembered here with the
bytes they stand for, then read back from a restarted daemon and compared byte for byte."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import aiohttp

from tests.content import BLOCK, content, content_information

READ_PIECE = 4 << 20  # bytes per block-read when reading back
# A cache limit no test reaches, whatever the disk's size: eviction would look like loss.
NO_EVICTION = {"PEERDISTD_CACHE_LIMIT_BYTES": str(1 << 40)}


@dataclass
class Ledger:
    """Acknowledged publications and added ranges, and what reading them back found."""

    publications: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (seed, size)
    added: dict[int, set[int]] = field(default_factory=dict)  # content seed -> piece offsets
    piece: int = 1 << 20
    acknowledged: int = 0  # bytes
    checked: int = 0  # bytes read back so far
    lost: int = 0  # acknowledged bytes the daemon no longer has
    wrong: int = 0  # bytes read back that differ from what was acknowledged
    problems: list[str] = field(default_factory=list)

    def published(self, pub_id: str, seed: int, size: int) -> None:
        if pub_id not in self.publications:
            self.acknowledged += size
        self.publications[pub_id] = (seed, size)

    def added_piece(self, seed: int, offset: int) -> None:
        pieces = self.added.setdefault(seed, set())
        if offset not in pieces:
            self.acknowledged += self.piece
            pieces.add(offset)


async def publish(api: aiohttp.ClientSession, pub_id: str, data: bytes) -> int:
    async with api.post("/v1/publications", params={"id": pub_id}, data=io.BytesIO(data)) as r:
        await r.read()
        return r.status


async def open_handle(api: aiohttp.ClientSession, ci: bytes) -> str:
    async with api.post("/v1/contents", data=ci) as r:
        assert r.status == 201, await r.text()
        return str((await r.json())["handle"])


async def add_piece(api: aiohttp.ClientSession, handle: str, offset: int, data: bytes) -> bool:
    """PUT one piece; True once the daemon said it verified and stored all of it."""
    async with api.put(
        f"/v1/contents/{handle}/data", params={"offset": str(offset)}, data=io.BytesIO(data)
    ) as r:
        if r.status != 200:
            await r.read()
            return False
        return bool((await r.json())["verified"] == len(data))


async def read_back(
    api: aiohttp.ClientSession, ci: bytes, want: bytes, ranges: list[tuple[int, int]]
) -> tuple[int, int, str | None]:
    """(lost, wrong, first problem) of reading ``ranges`` of ``want`` from the cache only.

    A short read goes on after what it returned; MISSING_DATA skips the range it names.
    """
    handle = await open_handle(api, ci)
    lost = wrong = 0
    problem = None
    try:
        for start, end in ranges:
            pos = start
            while pos < end:
                size = min(READ_PIECE, end - pos)
                async with api.post(
                    f"/v1/contents/{handle}/block-read",
                    params={"offset": str(pos), "max": str(size), "timeout_ms": "0"},
                ) as r:
                    body = await r.read()
                    status = r.status
                if status == 200 and body:
                    expected = want[pos : pos + len(body)]
                    if body != expected:
                        bad = sum(a != b for a, b in zip(body, expected, strict=True))
                        wrong += bad
                        problem = problem or f"offset {pos}: {bad} wrong bytes"
                    pos += len(body)
                    continue
                problem = problem or f"offset {pos}: {status} {body[:200]!r}"
                skip = end - pos
                if status == 424:  # MISSING_DATA names the missing range
                    missing = json.loads(body)
                    skip = min(skip, max(1, missing["offset"] + missing["length"] - pos))
                lost += skip
                pos += skip
    finally:
        async with api.delete(f"/v1/contents/{handle}"):
            pass
    return lost, wrong, problem


async def check_publication(
    api: aiohttp.ClientSession, ledger: Ledger, pub_id: str, seed: int, size: int
) -> None:
    async with api.get(f"/v1/publications/{pub_id}/content-information") as r:
        ci = await r.read()
        status = r.status
    if status != 200:
        ledger.lost += size
        ledger.problems.append(f"publication {pub_id}: {status} {ci[:200]!r}")
        return
    lost, wrong, problem = await read_back(api, ci, content(size, seed), [(0, size)])
    ledger.checked += size
    ledger.lost += lost
    ledger.wrong += wrong
    if problem:
        ledger.problems.append(f"publication {pub_id}: {problem}")


def added_content(seed: int, size: int) -> tuple[bytes, bytes]:
    """Content an add-data writer adds, and its content information."""
    data = content(size, seed)
    return data, content_information(data).to_bytes()


async def check_added(
    api: aiohttp.ClientSession, ledger: Ledger, seed: int, size: int, offsets: set[int]
) -> None:
    data, ci = added_content(seed, size)
    ranges = [(o, min(o + ledger.piece, size)) for o in sorted(offsets)]
    lost, wrong, problem = await read_back(api, ci, data, ranges)
    ledger.checked += sum(e - s for s, e in ranges)
    ledger.lost += lost
    ledger.wrong += wrong
    if problem:
        ledger.problems.append(f"added content {seed}: {problem}")


assert (1 << 20) % BLOCK == 0  # pieces are whole V1 blocks: each verifies on its own
