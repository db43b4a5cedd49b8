"""Users are isolated (issue 8, finding 7): a non-root uid cannot evict, see or probe another
uid's content, and a cache flush leaves the blocks of live publications unless asked."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp

from peerdistd.proto.pccrc import ContentInformation
from tests.content import BLOCK, content, content_information
from tests.daemon.test_api_owners_and_bad_input import NOBODY, as_uid, shared_daemon
from tests.harness import DaemonProcess, start_daemon

__all__ = ["shared_daemon"]  # the fixture: a daemon whose socket every uid may use


CIS: dict[bytes, bytes] = {}  # content -> the content information the test uses for it


def ci_of(data: bytes) -> bytes:
    return CIS.get(data) or content_information(data).to_bytes()


async def publish(api: aiohttp.ClientSession, pub_id: str, data: bytes) -> None:
    """Publish ``data``; from then on the test opens it with the daemon's content information
    (made with the daemon's secret, so its segment ids are the ones cached)."""
    async with api.post("/v1/publications", params={"id": pub_id}, data=data) as r:
        assert r.status == 201
    async with api.get(f"/v1/publications/{pub_id}/content-information") as r:
        CIS[data] = await r.read()


async def open_handle(api: aiohttp.ClientSession, data: bytes) -> str:
    async with api.post("/v1/contents", data=ci_of(data)) as r:
        assert r.status == 201
        return str((await r.json())["handle"])


async def cached(api: aiohttp.ClientSession, data: bytes) -> int:
    """How many bytes of ``data`` root reads from the local cache alone (timeout_ms=0)."""
    h = await open_handle(api, data)
    async with api.post(f"/v1/contents/{h}/stream-read", params={"max": "0"}) as r:
        available = int(r.headers["PeerDist-Available"])
    if available:
        async with api.post(
            f"/v1/contents/{h}/block-read",
            params={"offset": "0", "max": str(available), "timeout_ms": "0"},
        ) as r:
            assert r.status == 200 and await r.read() == data[:available]
    async with api.delete(f"/v1/contents/{h}") as r:
        assert r.status == 204
    return available


def nobody_opens(sock: Path, data: bytes) -> str:
    opened = as_uid(NOBODY, "POST", "/v1/contents", sock, ci_of(data))
    assert opened["status"] == 201, opened
    return str(json.loads(opened["body"])["handle"])


async def test_a_users_flush_leaves_blocks_that_others_cached(
    shared_daemon: DaemonProcess,
) -> None:
    sock = shared_daemon.socket
    published = content(3 * BLOCK, seed=71)
    added = content(2 * BLOCK, seed=72)
    own = content(2 * BLOCK, seed=73)
    async with shared_daemon.session() as api:
        await publish(api, "r", published)
        h = await open_handle(api, added)  # root caches content it did not publish
        async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=added) as r:
            assert r.status == 200 and (await r.json())["verified"] == len(added)
        async with api.delete(f"/v1/contents/{h}") as r:
            assert r.status == 204
        roots_open = await open_handle(api, own)  # root has the content nobody adds open

    # uid 65534 opens each with its content information and flushes it.
    for data in (published, added):
        theirs = nobody_opens(sock, data)
        flushed = as_uid(NOBODY, "POST", f"/v1/contents/{theirs}/flush", sock)
        assert flushed["status"] == 204, flushed
    mine = nobody_opens(sock, own)
    added_own = as_uid(NOBODY, "PUT", f"/v1/contents/{mine}/data?offset=0", sock, own)
    assert json.loads(added_own["body"])["verified"] == len(own)
    as_uid(NOBODY, "POST", f"/v1/contents/{mine}/flush", sock)

    async with shared_daemon.session() as api:
        assert await cached(api, published) == len(published)
        assert await cached(api, added) == len(added)
        # Root's handle names the content nobody added: those blocks stay while it is open.
        assert await cached(api, own) == len(own)
        async with api.delete(f"/v1/contents/{roots_open}") as r:
            assert r.status == 204
    # Alone, a user still flushes what only it cached.
    lonely = content(2 * BLOCK, seed=74)
    mine = nobody_opens(sock, lonely)
    as_uid(NOBODY, "PUT", f"/v1/contents/{mine}/data?offset=0", sock, lonely)
    async with shared_daemon.session() as api:
        assert await cached(api, lonely) == len(lonely)  # root opens and closes it
    # Root named it: no longer nobody's alone.
    assert as_uid(NOBODY, "POST", f"/v1/contents/{mine}/flush", sock)["status"] == 204
    async with shared_daemon.session() as api:
        assert await cached(api, lonely) == len(lonely)
    solo = content(2 * BLOCK, seed=75)
    mine = nobody_opens(sock, solo)
    as_uid(NOBODY, "PUT", f"/v1/contents/{mine}/data?offset=0", sock, solo)
    assert as_uid(NOBODY, "POST", f"/v1/contents/{mine}/flush", sock)["status"] == 204
    async with shared_daemon.session() as api:
        assert await cached(api, solo) == 0


async def test_foreign_and_unknown_publication_ids_answer_alike(
    shared_daemon: DaemonProcess,
) -> None:
    sock = shared_daemon.socket
    async with (
        shared_daemon.session() as api,
        api.post("/v1/publications", params={"id": "secret"}, data=b"x" * 5000) as r,
    ):
        assert r.status == 201
    for method, path in (
        ("GET", "/v1/publications/{}"),
        ("GET", "/v1/publications/{}/content-information"),
        ("GET", "/v1/publications/{}/content-information?offset=0&length=10"),
        ("DELETE", "/v1/publications/{}"),
    ):
        foreign = as_uid(NOBODY, method, path.format("secret"), sock)
        absent = as_uid(NOBODY, method, path.format("no-such-id"), sock)
        assert foreign["status"] == absent["status"] == 400, (path, foreign, absent)
        names = {json.loads(a["body"])["error"] for a in (foreign, absent)}
        assert names == {"INVALID_PARAMETER"}, path
    async with shared_daemon.session() as api, api.get("/v1/publications/secret") as r:
        assert r.status == 200  # still there, and root's


def nobody_events(sock: Path, until: str) -> tuple[int, int]:
    """Fork a uid-65534 reader of GET /v1/events; returns (pid, fd): one byte on fd once it
    is subscribed, then everything it received up to an event naming ``until``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(60)
                conn.connect(str(sock))
                conn.sendall(b"GET /v1/events HTTP/1.1\r\nHost: peerdistd\r\n\r\n")
                got = b""
                while b"STATUS_CHANGED" not in got:
                    got += conn.recv(65536)
                os.write(write_end, b"!")
                while until.encode() not in got:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            os.write(write_end, got)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


async def test_events_go_only_to_the_uid_they_concern(shared_daemon: DaemonProcess) -> None:
    sock = shared_daemon.socket
    data = content(2 * BLOCK, seed=76)
    theirs = nobody_opens(sock, data)
    pid, fd = nobody_events(sock, theirs)
    try:
        assert os.read(fd, 1) == b"!"  # subscribed
        async with (
            shared_daemon.session() as api,
            api.get("/v1/events", timeout=aiohttp.ClientTimeout(total=60)) as root_events,
        ):
            mine = await open_handle(api, data)
            async with api.post(
                f"/v1/contents/{mine}/stream-read", params={"timeout_ms": "0"}
            ) as r:
                assert r.status == 424  # MISSING_DATA: an event for root's handle
            read = as_uid(NOBODY, "POST", f"/v1/contents/{theirs}/stream-read?timeout_ms=0", sock)
            assert read["status"] == 424
            # Root sees every uid's events, its own and nobody's.
            seen = b""
            while theirs.encode() not in seen:
                seen += await root_events.content.readany()
            assert mine.encode() in seen
        received = b""
        while chunk := os.read(fd, 65536):
            received += chunk
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # it may wait for an event that never comes
        raise
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)  # noqa: ASYNC222 (it has exited: its pipe is closed)
    assert os.waitstatus_to_exitcode(status) == 0
    assert theirs.encode() in received
    assert mine.encode() not in received, received


async def test_cache_flush_keeps_publications_unless_asked(daemon: DaemonProcess) -> None:
    published = content(3 * BLOCK, seed=77)
    added = content(2 * BLOCK, seed=78)
    async with daemon.session() as api:
        await publish(api, "p", published)
        h = await open_handle(api, added)
        async with api.put(f"/v1/contents/{h}/data", params={"offset": "0"}, data=added) as r:
            assert r.status == 200
        async with api.delete(f"/v1/contents/{h}") as r:
            assert r.status == 204
        async with api.delete("/v1/cache") as r:
            assert r.status == 200
            flushed = await r.json()
        assert flushed["kept_for_publications"] == len(published)
        # Blocks added moments ago may still wait for their group commit: those go too, but
        # are not counted as freed (the store counts indexed bytes).
        assert flushed["freed"] in (0, len(added))
        assert await cached(api, published) == len(published)
        assert await cached(api, added) == 0
        h = await open_handle(api, published)  # root's ClientFlushContent keeps them too
        async with api.post(f"/v1/contents/{h}/flush") as r:
            assert r.status == 204
        assert await cached(api, published) == len(published)
        async with api.delete("/v1/cache", params={"publications": "maybe"}) as r:
            assert r.status == 400 and (await r.json())["error"] == "INVALID_PARAMETER"
        async with api.delete("/v1/cache", params={"publications": "true"}) as r:
            assert await r.json() == {"freed": len(published), "kept_for_publications": 0}
        assert await cached(api, published) == 0


def nobody_json(method: str, path: str, sock: Path, body: bytes | None = None) -> tuple[int, Any]:
    got = as_uid(NOBODY, method, path, sock, body)
    return got["status"], json.loads(got["body"]) if got["body"] else None


async def test_publication_ids_are_per_uid(shared_daemon: DaemonProcess) -> None:
    """Two uids publish the same id; neither can tell whether the other's exists (no answer
    depends on it, publishing included); root lists and unpublishes both."""
    sock = shared_daemon.socket
    theirs, roots = content(BLOCK + 10, seed=81), content(2 * BLOCK, seed=82)
    assert nobody_json("POST", "/v1/publications?id=same", sock, theirs)[0] == 201
    async with shared_daemon.session() as api:
        for pub_id in ("same", "only-roots"):
            async with api.post("/v1/publications", params={"id": pub_id}, data=roots) as r:
                assert r.status == 201
                assert r.headers["Location"] == f"/v1/publications/{pub_id}"
    # Publishing under an id root holds answers as under a free one (it was 403, the oracle).
    answers = {
        pub_id: nobody_json("POST", f"/v1/publications?id={pub_id}", sock, theirs)
        for pub_id in ("same", "only-roots", "free")
    }
    assert {pub_id: status for pub_id, (status, _) in answers.items()} == dict.fromkeys(
        ("same", "only-roots", "free"), 201
    )
    assert all((made["size"], made["uid"]) == (len(theirs), NOBODY) for _, made in answers.values())
    status, listed = nobody_json("GET", "/v1/publications", sock)
    assert sorted((p["id"], p["uid"]) for p in listed["publications"]) == [
        ("free", NOBODY), ("only-roots", NOBODY), ("same", NOBODY)
    ]  # fmt: skip
    status, info = nobody_json("GET", "/v1/publications/same", sock)
    assert (status, info["size"]) == (200, len(theirs))
    status, err = nobody_json("GET", "/v1/publications/same/content-information?version=2", sock)
    assert status == 400 and "published as version 1" in err["message"]  # its own is found
    # Naming root's namespace is refused alike, whether the id exists there or not.
    for path in (
        "/v1/publications?uid=0",
        "/v1/publications/same?uid=0",
        "/v1/publications/no-such-id?uid=0",
        "/v1/publications/same/content-information?uid=0",
        "/v1/publications/no-such-id/content-information?uid=0",
    ):
        status, err = nobody_json("GET", path, sock)
        assert (status, err["error"]) == (403, "ACCESS_DENIED"), path
    for path in ("/v1/publications/same?uid=0", "/v1/publications/no-such-id?uid=0"):
        status, err = nobody_json("DELETE", path, sock)
        assert (status, err["error"]) == (403, "ACCESS_DENIED"), path
    status, err = nobody_json("POST", "/v1/publications?id=same&uid=0", sock, b"x")
    assert (status, err["error"]) == (403, "ACCESS_DENIED")
    assert nobody_json("GET", f"/v1/publications/same?uid={NOBODY}", sock)[0] == 200

    async with shared_daemon.session() as api:
        async with api.get("/v1/publications/same") as r:  # root's own
            assert (await r.json())["size"] == len(roots)
        async with api.get("/v1/publications") as r:  # root lists every uid's
            everyone = sorted((p["id"], p["uid"]) for p in (await r.json())["publications"])
        assert everyone == [
            ("free", NOBODY), ("only-roots", 0), ("only-roots", NOBODY), ("same", 0),
            ("same", NOBODY),
        ]  # fmt: skip
        async with api.get("/v1/publications", params={"uid": str(NOBODY)}) as r:
            assert len((await r.json())["publications"]) == 3
        them = {"uid": str(NOBODY)}
        cis = []
        for pub_id in ("same", "free"):
            path = f"/v1/publications/{pub_id}/content-information"
            async with api.get(path, params=them) as r:
                assert r.status == 200
                cis.append(await r.read())
        # Content information (and so segment ids, and cached blocks) does not depend on the id.
        assert cis[0] == cis[1] and ContentInformation.parse(cis[0]).length == len(theirs)
        async with api.get("/v1/publications/free") as r:  # not root's own: not found
            assert r.status == 400 and (await r.json())["error"] == "INVALID_PARAMETER"
        async with api.post(
            "/v1/publications", params={"id": "for-them", **them}, data=theirs
        ) as r:
            assert r.status == 201 and (await r.json())["uid"] == NOBODY
            assert r.headers["Location"] == f"/v1/publications/for-them?uid={NOBODY}"
        async with api.delete("/v1/publications/same", params=them) as r:
            assert r.status == 204
        async with api.get("/v1/publications/same") as r:  # root's "same" is untouched
            assert r.status == 200 and (await r.json())["size"] == len(roots)
    status, err = nobody_json("GET", "/v1/publications/same", sock)
    assert (status, err["error"]) == (400, "INVALID_PARAMETER")
    assert nobody_json("GET", "/v1/publications/for-them", sock)[0] == 200
    # Unpublishing its own "only-roots" leaves root's, and root's unpublish leaves nobody's.
    assert nobody_json("DELETE", "/v1/publications/only-roots", sock)[0] == 204
    async with shared_daemon.session() as api:
        async with api.get("/v1/publications/only-roots") as r:
            assert r.status == 200
        async with api.delete("/v1/publications/same") as r:
            assert r.status == 204
        async with api.delete("/v1/publications/free", params=them) as r:
            assert r.status == 204
        async with api.get("/v1/publications") as r:
            left = sorted((p["id"], p["uid"]) for p in (await r.json())["publications"])
        assert left == [("for-them", NOBODY), ("only-roots", 0)]


# publications.db as daemons made it when ids were one namespace for the node.
ONE_NAMESPACE = """
CREATE TABLE publications(
    id TEXT PRIMARY KEY, owner_uid INTEGER NOT NULL, version INTEGER NOT NULL,
    algorithm INTEGER NOT NULL, size INTEGER NOT NULL, content_information BLOB NOT NULL,
    created REAL NOT NULL, segment_ids BLOB NOT NULL);
CREATE INDEX publications_owner ON publications(owner_uid, created);
"""


async def test_a_store_of_one_namespace_opens_with_its_owners(tmp_path: Path) -> None:
    state = tmp_path / "node-state"
    state.mkdir(mode=0o700)
    db = sqlite3.connect(state / "publications.db")
    db.executescript(ONE_NAMESPACE)
    for pub_id, owner, seed in (("old-roots", 0, 83), ("old-theirs", NOBODY, 84)):
        ci = content_information(content(BLOCK, seed=seed))
        db.execute(
            "INSERT INTO publications VALUES (?, ?, 1, ?, ?, ?, ?, ?)",
            (pub_id, owner, ci.algorithm.value, BLOCK, ci.to_bytes(), 1.0 + owner,
             b"".join(s.segment_id for s in ci.segments)),
        )  # fmt: skip
    db.commit()
    db.close()
    d = start_daemon(tmp_path)
    try:
        async with d.session() as api:
            async with api.get("/v1/publications") as r:
                listed = [(p["id"], p["uid"]) for p in (await r.json())["publications"]]
            assert listed == [("old-roots", 0), ("old-theirs", NOBODY)]
            async with api.get("/v1/publications/old-theirs") as r:
                assert r.status == 400  # not root's: it kept its owner
            async with api.get("/v1/publications/old-theirs", params={"uid": str(NOBODY)}) as r:
                assert r.status == 200
            async with api.post("/v1/publications", params={"id": "old-theirs"}, data=b"x") as r:
                assert r.status == 201  # root's own "old-theirs" now, beside uid 65534's
            async with api.get("/v1/publications", params={"uid": str(NOBODY)}) as r:
                assert [p["id"] for p in (await r.json())["publications"]] == ["old-theirs"]
    finally:
        d.stop()
        d.notify.close()
