"""The local PeerDist API (DESIGN.md, "The local API (v1)") as an aiohttp application.

Handlers only translate HTTP to engine calls: query parsing, the caller's uid, bodies streamed
in, bytes or JSON out. Every :class:`~peerdistd.errors.ApiError` becomes its JSON error with
its one HTTP status; nothing else of the engine's or aiohttp's internals reaches the caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import quote

from aiohttp import web

from peerdistd import errors
from peerdistd.api.failures import errors_middleware
from peerdistd.api.peercred import peer_uid
from peerdistd.engine.core import Engine, ReadResult
from peerdistd.engine.events import Event
from peerdistd.engine.stats import hit_ratios
from peerdistd.proto.pccrc import HashAlgorithm
from peerdistd.store.healing import iter_notes
from peerdistd.store.publications import Publication

log = logging.getLogger(__name__)

ENGINE: web.AppKey[Engine] = web.AppKey("engine", Engine)
INFO: web.AppKey[Callable[[], Mapping[str, Any]]] = web.AppKey("info")
PEERS: web.AppKey[Callable[[], list[Mapping[str, Any]]]] = web.AppKey("peers")

DEFAULT_MAX = 1 << 20
DEFAULT_TIMEOUT_MS = 5000
MAX_TIMEOUT_MS = 3_600_000
MAX_CONTENT_INFORMATION = 64 * 1024 * 1024  # covers a V1 description of ~128 GiB of content
U64 = (1 << 64) - 1
# The ``id`` of a new publication (openapi.json has the same pattern): printable ASCII
# without space or '/', so it fits a URL path segment and a terminal as it is.
PUBLICATION_ID = re.compile(r"[!-.0-~]{1,256}")
MAX_UID = (1 << 32) - 2  # uid_t; (uid_t)-1 is no uid


def caller(request: web.Request) -> int:
    # Asked again each time (one getsockopt): a str key in the request's storage is
    # deprecated in newer aiohttp, and RequestKey does not exist in older ones.
    uid = peer_uid(request.transport.get_extra_info("socket") if request.transport else None)
    if uid is None:
        raise errors.AccessDenied("cannot tell who is calling (no peer credentials)")
    return int(uid)


def q_int(
    request: web.Request, name: str, default: int | None, lo: int = 0, hi: int = U64
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise errors.InvalidParameter(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise errors.InvalidParameter(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def q_flags(request: web.Request) -> list[str]:
    return [f.strip() for f in request.query.get("flags", "").split(",") if f.strip()]


def q_timeout(request: web.Request) -> float:
    ms = q_int(request, "timeout_ms", DEFAULT_TIMEOUT_MS, 0, MAX_TIMEOUT_MS)
    assert ms is not None
    return ms / 1000.0


async def body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives (whatever the socket delivered; no re-chunking)."""
    async for chunk in request.content.iter_any():
        yield chunk


async def read_ci_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_CONTENT_INFORMATION:
        raise errors.InvalidParameter(
            f"content information larger than {MAX_CONTENT_INFORMATION} bytes"
        )
    return await request.read()


def pub_json(pub: Publication) -> dict[str, Any]:
    algorithm = HashAlgorithm(pub.algorithm)
    return {
        "id": pub.id,
        "size": pub.size,
        "version": pub.version,
        "algorithm": algorithm.name.lower(),
        "segments": len(pub.segment_ids),
        "created": pub.created,
        "uid": pub.owner_uid,
    }


def q_owner(request: web.Request) -> int | None:
    """``uid``: whose publication ids the request names (root only for another uid's)."""
    return q_int(request, "uid", None, 0, MAX_UID)


def pub_location(pub: Publication, uid: int) -> str:
    where = f"/v1/publications/{quote(pub.id, safe='')}"
    return where if pub.owner_uid == uid else f"{where}?uid={pub.owner_uid}"


def data_response(result: ReadResult) -> web.Response:
    return web.Response(
        body=result.data,
        content_type="application/octet-stream",
        headers={
            "PeerDist-Offset": str(result.offset),
            "PeerDist-Read-Id": result.read_id,
            "PeerDist-From-Peers": str(result.from_peers),
        },
    )


# -- status and events -------------------------------------------------------------------


async def get_status(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    usage = engine.store.usage()
    counters = dict(engine.stats_snapshot())
    body: dict[str, Any] = {
        "status": engine.status,
        "unavailable_reason": engine.unavailable_reason,
        "cache": {
            "bytes_used": usage.bytes_used,
            "limit_bytes": usage.limit_bytes,
            "segments": usage.segments,
            "blocks": usage.blocks,
            "evictions": usage.evictions,
            "bad_blocks_from_disk": usage.bad_blocks_from_disk,
        },
        "counters": counters,
        "hit_ratio": hit_ratios(counters),
        "peers": request.app[PEERS](),
        # Damaged store files set aside and rebuilt since start (oldest first).
        "store_notes": list(iter_notes(engine.store.notes(), engine.publications.notes())),
    }
    body.update(request.app[INFO]())
    return web.json_response(body)


async def get_events(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    uid = caller(request)
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await resp.prepare(request)
    subscription = engine.events.subscribe(
        Event("STATUS_CHANGED", {"status": engine.status}), uid=uid
    )
    try:
        async for event in subscription:
            line = f"event: {event.name}\ndata: {json.dumps(event.data)}\n\n"
            await resp.write(line.encode())
    finally:
        subscription.close()
    return resp


async def get_openapi(request: web.Request) -> web.Response:
    text = resources.files("peerdistd.api").joinpath("openapi.json").read_text("utf-8")
    return web.Response(text=text, content_type="application/json")


# -- publications ------------------------------------------------------------------------


async def post_publication(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    uid = caller(request)
    version = q_int(request, "version", 1, 1, 2)
    name = request.query.get("hash", "sha256")
    pub_id = request.query.get("id")
    if pub_id is not None and not PUBLICATION_ID.fullmatch(pub_id):
        raise errors.InvalidParameter(
            "id must be 1..256 printable ASCII characters, without spaces or '/'"
        )
    if version == 2:
        algorithm = HashAlgorithm.TRUNCATED_SHA512
    else:
        try:
            algorithm = HashAlgorithm.from_name(name)
        except (ValueError, KeyError):
            raise errors.InvalidParameter(
                f"hash must be sha256, sha384 or sha512, got {name!r}"
            ) from None
    assert version is not None
    owner = q_owner(request)
    pub = await engine.publisher.publish(
        uid, body_chunks(request), pub_id=pub_id, version=version, algorithm=algorithm, owner=owner
    )
    return web.json_response(
        pub_json(pub), status=201, headers={"Location": pub_location(pub, uid)}
    )


async def list_publications(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    pubs = engine.publisher.list_publications(caller(request), q_owner(request))
    return web.json_response({"publications": [pub_json(p) for p in pubs]})


async def get_publication(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    pub = engine.publisher.publication(caller(request), request.match_info["id"], q_owner(request))
    return web.json_response(pub_json(pub))


async def get_content_information(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    data = engine.publisher.content_information(
        caller(request),
        request.match_info["id"],
        q_int(request, "offset", None),
        q_int(request, "length", None, 1),
        q_int(request, "version", None, 1, 2),
        q_owner(request),
    )
    return web.Response(body=data, content_type="application/octet-stream")


async def delete_publication(request: web.Request) -> web.Response:
    request.app[ENGINE].publisher.unpublish(
        caller(request), request.match_info["id"], q_owner(request)
    )
    return web.Response(status=204)


# -- contents (client side) --------------------------------------------------------------


async def post_content(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    uid = caller(request)
    engine.check_enabled()
    handle = engine.open_content(uid, await read_ci_body(request), q_flags(request))
    return web.json_response(
        handle.info(), status=201, headers={"Location": f"/v1/contents/{handle.id}"}
    )


async def post_content_information(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    uid = caller(request)
    part = await read_ci_body(request)
    handle = await engine.add_content_information(uid, request.match_info["h"], part)
    return web.json_response(handle.info())


async def post_complete(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    h = engine.complete_content_information(caller(request), request.match_info["h"])
    return web.json_response(h.info())


async def _read(request: web.Request, block: bool) -> web.Response:
    engine = request.app[ENGINE]
    uid = caller(request)
    handle_id = request.match_info["h"]
    max_bytes = q_int(request, "max", DEFAULT_MAX, 0, engine.settings.max_read)
    timeout = q_timeout(request)
    flags = q_flags(request)
    try:
        if block:
            offset = q_int(request, "offset", None)
            if offset is None:
                raise errors.InvalidParameter("offset is required for a block read")
            if max_bytes == 0:
                raise errors.InvalidParameter("max must be at least 1 for a block read")
            assert max_bytes is not None
            result = await engine.block_read(uid, handle_id, offset, max_bytes, timeout, flags)
        elif max_bytes == 0:
            offset, available = engine.available(uid, handle_id)
            return web.Response(
                status=200,
                content_type="application/octet-stream",  # an empty body, as documented
                headers={"PeerDist-Offset": str(offset), "PeerDist-Available": str(available)},
            )
        else:
            assert max_bytes is not None
            result = await engine.stream_read(uid, handle_id, max_bytes, timeout, flags)
    except asyncio.CancelledError:
        engine.reclaim(uid, handle_id)  # the client went away with this read pending
        raise
    return data_response(result)


async def post_stream_read(request: web.Request) -> web.Response:
    return await _read(request, block=False)


async def post_block_read(request: web.Request) -> web.Response:
    return await _read(request, block=True)


async def put_data(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    uid = caller(request)
    offset = q_int(request, "offset", None)
    if offset is None:
        raise errors.InvalidParameter("offset is required")
    out = await engine.add_data(uid, request.match_info["h"], offset, body_chunks(request))
    return web.json_response(
        {"offset": offset, "length": out.received, "verified": out.verified, "held": out.held}
    )


async def post_flush(request: web.Request) -> web.Response:
    await request.app[ENGINE].flush(caller(request), request.match_info["h"])
    return web.Response(status=204)


async def delete_content(request: web.Request) -> web.Response:
    request.app[ENGINE].close(caller(request), request.match_info["h"])
    return web.Response(status=204)


# -- cache and peers ---------------------------------------------------------------------


async def get_cache(request: web.Request) -> web.Response:
    caller(request)
    usage = request.app[ENGINE].store.usage()
    return web.json_response(
        {
            "bytes_used": usage.bytes_used,
            "limit_bytes": usage.limit_bytes,
            "segments": usage.segments,
            "blocks": usage.blocks,
            "evictions": usage.evictions,
            "bad_blocks_from_disk": usage.bad_blocks_from_disk,
        }
    )


async def delete_cache(request: web.Request) -> web.Response:
    if caller(request) != 0:
        raise errors.AccessDenied("only root may flush the cache")
    raw = request.query.get("publications", "false").lower()
    if raw not in ("true", "1", "false", "0"):
        raise errors.InvalidParameter(f"publications must be true or false, got {raw!r}")
    result = await request.app[ENGINE].flush_cache(include_publications=raw in ("true", "1"))
    return web.json_response(result)


async def post_cache_verify(request: web.Request) -> web.Response:
    """Re-hash every cached block now; drop and report those that fail (root only)."""
    if caller(request) != 0:
        raise errors.AccessDenied("only root may verify the cache")
    report = await asyncio.to_thread(request.app[ENGINE].store.verify)
    return web.json_response(
        {
            "segments": report.segments,
            "blocks": report.blocks,
            "bad_blocks": report.bad_blocks,
            "bytes_dropped": report.bytes_dropped,
            "orphan_files": report.orphan_files,
        }
    )


async def get_peers(request: web.Request) -> web.Response:
    caller(request)
    return web.json_response({"peers": request.app[PEERS]()})


def make_app(
    engine: Engine,
    *,
    info: Callable[[], Mapping[str, Any]] | None = None,
    peers: Callable[[], list[Mapping[str, Any]]] | None = None,
) -> web.Application:
    """The API application; the daemon serves it on the Unix socket (and loopback TCP)."""
    middleware = errors_middleware(lambda: engine.settings.enabled, engine.cache_write_failed)
    app = web.Application(middlewares=[middleware], client_max_size=MAX_CONTENT_INFORMATION)
    app[ENGINE] = engine
    app[INFO] = info or dict
    app[PEERS] = peers or list
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/v1/events", get_events)
    app.router.add_get("/v1/openapi.json", get_openapi)
    app.router.add_post("/v1/publications", post_publication)
    app.router.add_get("/v1/publications", list_publications)
    app.router.add_get("/v1/publications/{id}", get_publication)
    app.router.add_get("/v1/publications/{id}/content-information", get_content_information)
    app.router.add_delete("/v1/publications/{id}", delete_publication)
    app.router.add_post("/v1/contents", post_content)
    app.router.add_post("/v1/contents/{h}/content-information", post_content_information)
    app.router.add_post("/v1/contents/{h}/content-information/complete", post_complete)
    app.router.add_post("/v1/contents/{h}/stream-read", post_stream_read)
    app.router.add_post("/v1/contents/{h}/block-read", post_block_read)
    app.router.add_put("/v1/contents/{h}/data", put_data)
    app.router.add_post("/v1/contents/{h}/flush", post_flush)
    app.router.add_delete("/v1/contents/{h}", delete_content)
    app.router.add_get("/v1/cache", get_cache)
    app.router.add_delete("/v1/cache", delete_cache)
    app.router.add_post("/v1/cache/verify", post_cache_verify)
    app.router.add_get("/v1/peers", get_peers)
    return app
