"""A small BranchCache origin web server: the files of a folder over HTTP, with MS-PCCRTP.

A client that advertises peerdist (PROTOCOLS.md section 5) gets the file's content
information, made by publishing the file through the local peerdistd (a client of its API,
like any application); everyone else, and every missing-data request, gets the plain bytes
with Range support. If the daemon cannot help, the answer is identity: a download never fails
because of PeerDist.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import mimetypes
import os
import stat
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

from peerdistd.api.client import PeerDistClient
from peerdistd.errors import InvalidData, InvalidParameter, PeerDistError
from peerdistd.proto.pccrtp import Reply, ReplyKind, decide

__all__ = ["FileKey", "FilePublisher", "OriginStats", "RunningOrigin", "make_app", "running_origin"]

log = logging.getLogger("peerdistd.origin")
DEFAULT_HASH_WAIT = 10.0  # seconds a request waits for first hashing before getting identity


@dataclass(frozen=True, slots=True)
class FileKey:
    """A file as served: its absolute path, size and mtime (a change means new hashes)."""

    path: str
    size: int
    mtime_ns: int

    @property
    def prefix(self) -> str:
        # Publication ids may not contain '/' (DESIGN.md), so the path goes in as a digest;
        # the whole path, so that two origins of one user never take each other's files.
        digest = hashlib.sha256(self.path.encode("utf-8", "surrogateescape")).hexdigest()
        return f"origin-{digest[:24]}-"

    def publication_id(self, version: int) -> str:
        return f"{self.prefix}{self.size:x}-{self.mtime_ns:x}-v{version}"


@dataclass(slots=True)
class OriginStats:
    """Requests and body bytes answered, by kind of answer."""

    requests: dict[ReplyKind, int] = field(default_factory=lambda: dict.fromkeys(ReplyKind, 0))
    body_bytes: dict[ReplyKind, int] = field(default_factory=lambda: dict.fromkeys(ReplyKind, 0))

    def add(self, kind: ReplyKind, size: int) -> None:
        self.requests[kind] += 1
        self.body_bytes[kind] += size

    def summary(self) -> str:
        parts = (
            f"{kind.value} {self.requests[kind]} ({self.body_bytes[kind]} bytes)"
            for kind in ReplyKind
        )
        return "served " + ", ".join(parts)


class FilePublisher:
    """Publishes each file through peerdistd once, on first demand, for every version offered.

    All versions are hashed together and a request waits for all of them: once a client got
    content information of one version, a client asking for the other gets it too, instead of
    identity with MakeHashRequest ([MS-PCCRTP] 3.2; what Microsoft's suite expects of IIS).
    """

    def __init__(
        self,
        client: PeerDistClient,
        hash_wait: float = DEFAULT_HASH_WAIT,
        versions: Collection[int] = (1, 2),
    ) -> None:
        self.client = client
        self.hash_wait = hash_wait
        self.versions = tuple(versions)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def _start(
        self, path: Path, key: FileKey, version: int, after: asyncio.Task[None] | None = None
    ) -> asyncio.Task[None]:
        """The publishing task of one version, started if needed (``after`` another one:
        one file is hashed one version at a time, the node's other work goes on)."""
        pub_id = key.publication_id(version)
        task = self._tasks.get(pub_id)
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            work = self._publish(path, key, version, after)
            task = asyncio.create_task(work, name=pub_id)
            self._tasks[pub_id] = task
        return task

    async def content_information(
        self, path: Path, key: FileKey, version: int, offset: int, length: int
    ) -> bytes | None:
        """The content information for [offset, offset+length); None while still hashing."""
        pub_id = key.publication_id(version)
        for attempt in (1, 2):
            task = self._start(path, key, version)
            others, last = [], task
            for v in self.versions:
                if v != version:
                    last = self._start(path, key, v, after=last)
                    others.append(last)
            # The other versions too; their failures are their own requests' business.
            pending = [t for t in (task, *others) if not t.done()]
            if pending:
                _, still = await asyncio.wait(pending, timeout=self.hash_wait)
                if still:
                    return None
            task.result()  # this version's failure is ours
            try:
                if offset == 0 and length == key.size:
                    return await self.client.content_information(pub_id)
                return await self.client.content_information(pub_id, offset=offset, length=length)
            except InvalidParameter:  # withdrawn behind our back: publish it again, once
                self._tasks.pop(pub_id, None)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _publish(
        self, path: Path, key: FileKey, version: int, after: asyncio.Task[None] | None = None
    ) -> None:
        if after is not None:
            await asyncio.wait([after])  # its outcome is its own requests' business
        pub_id = key.publication_id(version)
        with contextlib.suppress(InvalidParameter):  # not published yet (e.g. a fresh daemon)
            if (await self.client.publication(pub_id)).size == key.size:
                return
        pub = await self.client.publish(path, id=pub_id, version=version)
        now = await asyncio.to_thread(path.stat)
        if (pub.size, now.st_size, now.st_mtime_ns) != (key.size, key.size, key.mtime_ns):
            with contextlib.suppress(PeerDistError):
                await self.client.unpublish(pub_id)
            raise InvalidData(f"{key.path} changed while it was being hashed")
        log.info("published %s as %s (V%d)", key.path, pub_id, version)
        await self._drop_stale(key)

    async def _drop_stale(self, key: FileKey) -> None:
        """Unpublish what earlier versions of the file left behind."""
        current = {key.publication_id(v) for v in (1, 2)}
        # Its own uid's only: root's listing would name every uid's (ids are per uid).
        for pub in await self.client.publications(uid=os.geteuid()):
            if pub.id.startswith(key.prefix) and pub.id not in current:
                with contextlib.suppress(PeerDistError):
                    await self.client.unpublish(pub.id)
                self._tasks.pop(pub.id, None)

    async def settle(self) -> None:
        """Wait until no publishing is under way (its failures are the requests' business)."""
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await self.settle()


ROOT = web.AppKey("origin_root", Path)
PUBLISHER = web.AppKey("origin_publisher", FilePublisher)
STATS = web.AppKey("origin_stats", OriginStats)
OFFERED: web.AppKey[tuple[int, ...]] = web.AppKey("origin_offered")
TROUBLE: web.AppKey[set[str]] = web.AppKey("origin_trouble")
REPLY = web.RequestKey("pccrtp_reply", Reply)


class _IdentityFile(web.FileResponse):
    """FileResponse without its pre-compressed ``.gz``/``.br`` siblings: the bytes served must
    be exactly those the content information describes (missing-data ranges above all)."""

    def _get_file_path_stat_encoding(
        self, accept_encoding: str
    ) -> tuple[Path | None, os.stat_result, str | None]:
        return super()._get_file_path_stat_encoding("")


def _lookup(root: Path, relpath: str) -> tuple[Path, os.stat_result] | None:
    """The regular file under ``root`` that the URL path names (never outside root)."""
    try:
        path = (root / relpath).resolve()
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not path.is_relative_to(root) or not stat.S_ISREG(st.st_mode):
        return None
    return path, st


async def _serve(request: web.Request) -> web.StreamResponse:
    found = await asyncio.to_thread(_lookup, request.app[ROOT], request.match_info["path"])
    if found is None:
        raise web.HTTPNotFound()
    path, st = found
    offered: tuple[int, ...] = request.app[OFFERED]
    reply = decide(request.method, request.headers, offered)
    if reply.kind is ReplyKind.PEERDIST:
        key = FileKey(str(path), st.st_size, st.st_mtime_ns)
        answer = await _content_information(request, path, key, reply)
        if isinstance(answer, web.Response):
            return answer
        reply = answer
    request[REPLY] = reply
    return _IdentityFile(path, headers=reply.headers(st.st_size))


async def _content_information(
    request: web.Request, path: Path, key: FileKey, reply: Reply
) -> web.Response | Reply:
    """The peerdist answer, or the identity reply to give instead."""
    try:
        span = request.http_range  # one range only; aiohttp refuses the rest (ValueError)
    except ValueError:
        return reply.identity_instead("a Range peerdist cannot answer")
    start, stop = span.start or 0, span.stop
    if start < 0:  # a suffix range: the last -start bytes
        start, stop = max(0, key.size + start), key.size
    stop = key.size if stop is None else min(stop, key.size)
    if start >= stop:
        return reply.identity_instead("an empty or unsatisfiable range")
    assert reply.content_version is not None
    try:
        info = await request.app[PUBLISHER].content_information(
            path, key, reply.content_version, start, stop - start
        )
    except PeerDistError as exc:
        _warn_once(request.app, exc)
        return reply.identity_instead(f"peerdistd: {exc}")
    if info is None:  # [MS-PCCRTP] 3.2: identity now, hashes on the way
        return reply.identity_instead("still hashing", make_hash_request=True)
    request[REPLY] = reply
    etag = f'"{key.mtime_ns:x}-{key.size:x}"'  # aiohttp FileResponse's, so If-Range matches
    headers = {
        **reply.headers(stop - start),
        "ETag": etag,
        # Rounded up, as FileResponse does, so both answers carry the same date.
        "Last-Modified": formatdate(math.ceil(key.mtime_ns / 1e9), usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": mimetypes.guess_type(key.path)[0] or "application/octet-stream",
    }
    return web.Response(body=info, headers=headers)


def _warn_once(app: web.Application, exc: PeerDistError) -> None:
    """Each distinct trouble as a warning once, then quietly: a daemon that is down would
    otherwise put a line in the log for every request."""
    said = app[TROUBLE]
    text = str(exc)
    if text in said:
        log.debug("no content information: %s", text)
        return
    if len(said) < 256:  # bounded: the messages can name files
        said.add(text)
    log.warning("no content information (serving plain bytes): %s", text)


async def _count(request: web.Request, response: web.StreamResponse) -> None:
    reply = request.get(REPLY)
    if reply is None:
        return
    empty = request.method == "HEAD" or response.status == 304
    request.app[STATS].add(reply.kind, 0 if empty else response.content_length or 0)
    log.info(
        "%s %s%s -> %d %s (%s)",
        request.method,
        request.path,
        f" [{request.headers['Range']}]" if "Range" in request.headers else "",
        response.status,
        reply.kind.value,
        reply.reason if reply.content_version is None else f"V{reply.content_version}",
    )


def make_app(
    root: Path,
    client: PeerDistClient,
    *,
    offered: Collection[int] = (1, 2),
    hash_wait: float = DEFAULT_HASH_WAIT,
) -> web.Application:
    """The origin's aiohttp application serving the files under ``root``."""
    app = web.Application()
    app[ROOT] = root.resolve()
    app[PUBLISHER] = publisher = FilePublisher(client, hash_wait, offered)
    app[STATS] = OriginStats()
    app[TROUBLE] = set()
    app[OFFERED] = tuple(offered)

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        await publisher.close()

    app.cleanup_ctx.append(lifetime)
    app.on_response_prepare.append(_count)
    app.router.add_get("/{path:.+}", _serve)
    return app


@dataclass(frozen=True, slots=True)
class RunningOrigin:
    url: str  # http://host:port
    stats: OriginStats
    publisher: FilePublisher


@contextlib.asynccontextmanager
async def running_origin(
    root: Path,
    client: PeerDistClient,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    offered: Collection[int] = (1, 2),
    hash_wait: float = DEFAULT_HASH_WAIT,
) -> AsyncIterator[RunningOrigin]:
    """Serve ``root`` on host:port (port 0 picks one) until the block exits."""
    app = make_app(root, client, offered=offered, hash_wait=hash_wait)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield RunningOrigin(f"http://{shown}:{bound_port}", app[STATS], app[PUBLISHER])
    finally:
        await runner.cleanup()
