"""Read semantics of DESIGN.md against a real daemon over its Unix socket (peers off)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.content import BLOCK, content, content_information


async def open_handle(api: aiohttp.ClientSession, ci: bytes, flags: str = "") -> str:
    async with api.post("/v1/contents", data=ci, params={"flags": flags} if flags else {}) as r:
        assert r.status == 201, await r.text()
        body = await r.json()
    return str(body["handle"])


async def add(
    api: aiohttp.ClientSession, h: str, offset: int, data: bytes
) -> aiohttp.ClientResponse:
    async with api.put(f"/v1/contents/{h}/data", params={"offset": str(offset)}, data=data) as r:
        await r.read()
        return r


async def stream_read(api: aiohttp.ClientSession, h: str, **params: int) -> tuple[int, dict, bytes]:
    query = {k: str(v) for k, v in params.items()}
    async with api.post(f"/v1/contents/{h}/stream-read", params=query) as r:
        body = await r.read()
        return r.status, dict(r.headers), body


async def error_of(resp_status: int, body: bytes) -> dict:
    import json

    return json.loads(body)


async def test_missing_data_add_verify_then_read(api: aiohttp.ClientSession) -> None:
    data = content(3 * BLOCK + 100)
    ci = content_information(data).to_bytes()
    h = await open_handle(api, ci)
    status, _headers, body = await stream_read(api, h, timeout_ms=0)
    assert status == 424
    err = await error_of(status, body)
    assert err == {
        "error": "MISSING_DATA",
        "message": err["message"],
        "offset": 0,
        "length": len(data),
    }
    # The stream offset advanced over the missing range: the next read is past the end.
    status, _, body = await stream_read(api, h, timeout_ms=0)
    assert status == 416 and (await error_of(status, body))["error"] == "NO_MORE"
    r = await add(api, h, 0, data)
    assert r.status == 200
    async with api.post(
        f"/v1/contents/{h}/block-read", params={"offset": "0", "max": str(len(data))}
    ) as r:
        assert r.status == 200
        assert r.headers["PeerDist-Offset"] == "0"
        got = await r.read()
    # A read completes with what is available at its offset, up to max.
    assert got == data


async def test_early_completion_available_query_and_missing_run(
    api: aiohttp.ClientSession,
) -> None:
    data = content(5 * BLOCK, seed=2)
    h = await open_handle(api, content_information(data).to_bytes())
    # Cache blocks 0 and 3 only.
    assert (await add(api, h, 0, data[:BLOCK])).status == 200
    assert (await add(api, h, 3 * BLOCK, data[3 * BLOCK : 4 * BLOCK])).status == 200
    async with api.post(f"/v1/contents/{h}/stream-read", params={"max": "0"}) as r:
        assert r.status == 200
        assert r.headers["PeerDist-Available"] == str(BLOCK)
        assert r.headers["PeerDist-Offset"] == "0"
    status, headers, body = await stream_read(api, h, max=1 << 20, timeout_ms=0)
    assert status == 200 and headers["PeerDist-Offset"] == "0"
    assert body == data[:BLOCK]  # did not wait to fill max
    status, _, body = await stream_read(api, h, timeout_ms=0)
    err = await error_of(status, body)
    assert (status, err["error"], err["offset"], err["length"]) == (
        424,
        "MISSING_DATA",
        BLOCK,
        2 * BLOCK,  # blocks 1 and 2: up to the next cached block
    )
    status, headers, body = await stream_read(api, h, timeout_ms=0)
    assert headers["PeerDist-Offset"] == str(3 * BLOCK) and body == data[3 * BLOCK : 4 * BLOCK]


async def test_concurrent_stream_reads_take_consecutive_ranges(api: aiohttp.ClientSession) -> None:
    data = content(8 * BLOCK, seed=3)
    h = await open_handle(api, content_information(data).to_bytes())
    assert (await add(api, h, 0, data)).status == 200
    results = await asyncio.gather(
        *(stream_read(api, h, max=100_000, timeout_ms=0) for _ in range(6))
    )
    pieces = sorted((int(hd["PeerDist-Offset"]), b) for st, hd, b in results if st == 200)
    pos = 0
    for offset, body in pieces:
        assert offset == pos
        assert body == data[offset : offset + len(body)]
        pos += len(body)
    assert pos == len(data)


async def test_range_content_information_constrains_reads(api: aiohttp.ClientSession) -> None:
    data = content(6 * BLOCK, seed=4)
    full = content_information(data)
    start, length = BLOCK + 1000, 2 * BLOCK
    ci = full.sub_range(start, length).to_bytes()
    h = await open_handle(api, ci)
    status, _, body = await stream_read(api, h, timeout_ms=0)
    err = await error_of(status, body)
    assert (err["error"], err["offset"], err["length"]) == ("MISSING_DATA", start, length)
    async with api.post(
        f"/v1/contents/{h}/block-read", params={"offset": "0", "timeout_ms": "0"}
    ) as r:
        assert r.status == 416
    assert (await add(api, h, 0, data)).status == 200
    async with api.post(
        f"/v1/contents/{h}/block-read",
        params={"offset": str(start), "max": str(10 * BLOCK), "timeout_ms": "0"},
    ) as r:
        assert r.headers["PeerDist-Offset"] == str(start)
        assert await r.read() == data[start : start + length]


async def test_corrupt_block_rejected_and_never_served(api: aiohttp.ClientSession) -> None:
    data = content(3 * BLOCK, seed=5)
    h = await open_handle(api, content_information(data).to_bytes())
    bad = bytearray(data)
    bad[BLOCK + 17] ^= 0xFF
    async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=bytes(bad)) as r:
        assert r.status == 422
        assert (await r.json())["error"] == "INVALID_DATA"
    async with api.post(
        f"/v1/contents/{h}/block-read", params={"offset": str(BLOCK), "timeout_ms": "0"}
    ) as r:
        err = await r.json()
        assert (r.status, err["error"], err["offset"], err["length"]) == (
            424,
            "MISSING_DATA",
            BLOCK,
            BLOCK,
        )
    # The good blocks of the same body were kept.
    async with api.post(
        f"/v1/contents/{h}/block-read", params={"offset": "0", "timeout_ms": "0"}
    ) as r:
        assert await r.read() == data[:BLOCK]


async def test_partial_block_adds_are_assembled(api: aiohttp.ClientSession) -> None:
    data = content(2 * BLOCK + 5, seed=6)
    h = await open_handle(api, content_information(data).to_bytes())
    for i in range(0, len(data), 4000):
        r = await add(api, h, i, data[i : i + 4000])
        assert r.status == 200
    async with api.post(
        f"/v1/contents/{h}/block-read",
        params={"offset": "0", "max": str(len(data)), "timeout_ms": "0"},
    ) as r:
        assert await r.read() == data


async def test_content_information_in_pieces_and_held_data(api: aiohttp.ClientSession) -> None:
    data = content(1 << 20, seed=7)
    ci = content_information(data, version=2)
    assert len(ci.segments) >= 4
    raw = ci.to_bytes()
    cut = 31 + 5 + 68 * 2 + 10  # header, chunk header, two segment descriptions and a bit
    async with api.post("/v1/contents", data=raw[:cut]) as r:
        info = await r.json()
        assert r.status == 201 and info["complete"] is False
        h = info["handle"]
    async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=data) as r:
        added = await r.json()
    described = ci.segments[1].end
    assert added["verified"] == described
    assert added["held"] == len(data) - described
    async with api.post(f"/v1/contents/{h}/content-information", data=raw[cut:]) as r:
        assert r.status == 200
    async with api.post(f"/v1/contents/{h}/content-information/complete") as r:
        info = await r.json()
        assert r.status == 200 and info["complete"] is True and info["size"] == len(data)
    async with api.post(
        f"/v1/contents/{h}/block-read",
        params={"offset": "0", "max": str(len(data)), "timeout_ms": "0"},
    ) as r:
        got = await r.read()
    assert got == data[: len(got)] and len(got) > described


async def test_flush_drops_the_content_from_the_cache(api: aiohttp.ClientSession) -> None:
    data = content(3 * BLOCK, seed=9)
    ci = content_information(data).to_bytes()
    h = await open_handle(api, ci)
    assert (await add(api, h, 0, data)).status == 200
    async with api.get("/v1/cache") as r:
        assert (await r.json())["bytes_used"] == len(data)
    async with api.post(f"/v1/contents/{h}/flush") as r:
        assert r.status == 204
    async with api.get("/v1/cache") as r:
        assert (await r.json())["bytes_used"] == 0
    status, _, body = await stream_read(api, h, timeout_ms=0)
    assert (status, json.loads(body)["length"]) == (424, len(data))


async def test_close_and_unknown_handles(api: aiohttp.ClientSession) -> None:
    data = content(BLOCK, seed=8)
    h = await open_handle(api, content_information(data).to_bytes())
    async with api.delete(f"/v1/contents/{h}") as r:
        assert r.status == 204
    for method, path in (
        ("POST", f"/v1/contents/{h}/stream-read"),
        ("DELETE", f"/v1/contents/{h}"),
        ("PUT", f"/v1/contents/{h}/data?offset=0"),
    ):
        async with api.request(method, path) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "INVALID_HANDLE"
