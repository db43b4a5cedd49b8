"""Reads the local cache cannot answer are cache misses, whatever ends them (MISSING_DATA
included): otherwise the hit ratio counts only the reads that went well."""

from __future__ import annotations

import aiohttp

from tests.content import BLOCK, content, content_information


async def test_reads_answered_missing_data_are_cache_misses(api: aiohttp.ClientSession) -> None:
    data = content(3 * BLOCK + 7, seed=61)
    async with api.post("/v1/contents", data=content_information(data).to_bytes()) as r:
        h = (await r.json())["handle"]
    # Local only (timeout 0), then with the network (no peer can have it on --no-peers).
    for params in ({"timeout_ms": "0"}, {}):
        async with api.post(f"/v1/contents/{h}/block-read", params={"offset": "0", **params}) as r:
            assert (r.status, (await r.json())["error"]) == (424, "MISSING_DATA")
    async with api.get("/v1/status") as r:
        counters = (await r.json())["counters"]
    assert (counters["reads_missing_data"], counters["cache_hits"], counters["cache_misses"]) == (
        2,
        0,
        2,
    )
