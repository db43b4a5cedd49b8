"""Keep-alive HTTP/1.1 connections to peers: at most N per peer and M in all, reused LIFO.

A request names its peer as ``ip:port`` (IPv6 as ``[ip]:port``, never a DNS name) and gets
an :class:`Answer` or a :class:`PeerError`; the deadline covers waiting for a connection,
connecting and the exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
from collections import deque
from typing import Final

from peerdistd.net.http11 import HeadCache, parse_response_head
from peerdistd.net.http11_client import Answer, ClientConnection, StaleConnection
from peerdistd.net.types import PeerError, PeerSlow, PeerTimeout, PeerUnreachable, Progress

_CLOSE_TIMEOUT: Final = 1.0
# Allowed for the first byte of an answer before the floor rate applies: a round trip plus
# a peer reading a block from its disk.
FIRST_BYTE_GRACE: Final = 0.5
_MAX_IDLE_POOLS: Final = 4096  # peers remembered with no connection open (bounds the table)


class _Pool:
    """The connections to one peer."""

    __slots__ = ("count", "host", "idle", "peer", "port", "prefix", "waiters")

    def __init__(self, peer: str, path: str) -> None:
        self.peer = peer
        self.host, self.port = _address(peer)
        authority = f"[{self.host}]:{self.port}" if ":" in self.host else peer
        head = f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: "
        self.prefix = head.encode()
        self.idle: list[ClientConnection] = []
        self.count = 0  # open or opening
        # Tasks waiting for a connection: handed one (or None: "a slot freed, try again").
        self.waiters: deque[asyncio.Future[ClientConnection | None]] = deque()


class PeerPools:
    """Pooled connections for POSTs of small bodies to ``path`` on many peers."""

    def __init__(
        self,
        path: str,
        per_peer: int,
        total: int,
        keepalive: float,
        max_body: int,
        local_host: str | None = None,
    ):
        self._path = path
        self._local_host = local_host  # source address of outgoing connections, if set
        self._per_peer, self._max_total, self._keepalive = per_peer, total, keepalive
        self._max_body = max_body
        self._heads = HeadCache(parse_response_head)  # answers differ by their Date only
        self._pools: dict[str, _Pool] = {}
        self._owner: dict[ClientConnection, _Pool] = {}  # every connection counted in a pool
        self._total = 0
        self._global_waiters: deque[asyncio.Future[ClientConnection | None]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing: set[ClientConnection] = set()
        self._closed: asyncio.Future[None] | None = None

    def _source(self, peer_host: str) -> tuple[str, int] | None:
        """Connect from our own advertised address when it is of the peer's family, so the
        peer sees the address discovery told it (and a multi-homed node is recognisable)."""
        if self._local_host is None or (":" in self._local_host) != (":" in peer_host):
            return None
        return (self._local_host, 0)

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def close(self) -> None:
        """Fail what is pending, close every connection and wait until they are gone."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for pool in self._pools.values():
            _wake_all(pool.waiters)
        _wake_all(self._global_waiters)
        self._closing = {conn for conn in self._owner if conn.transport is not None}
        self._closed = loop.create_future()
        for conn in list(self._owner):
            conn.fail(PeerUnreachable(conn.peer, "client closed"))
        if self._closing:  # connection_lost follows an abort at once; bounded all the same
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed, _CLOSE_TIMEOUT)

    async def exchange(
        self,
        peer: str,
        body: bytes,
        timeout: float,
        *,
        floor: tuple[int, float] | None = None,
        progress: Progress | None = None,
    ) -> Answer:
        """POST ``body`` to ``peer``; its answer, or a PeerError.

        ``floor`` = (bytes expected, bytes per second): once sent, an answer that takes longer
        than FIRST_BYTE_GRACE plus that many bytes at that rate fails as :class:`PeerSlow`.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError("RetrievalClient used outside 'async with'")
        deadline = loop.time() + timeout
        for attempt in (1, 2):
            pool = self._pools.get(peer) or self._new_pool(peer)
            message = pool.prefix + b"%d\r\n\r\n" % len(body) + body
            conn = pool.idle.pop() if pool.idle else None
            if conn is None or not conn.reusable:
                conn = await self._acquire(pool, deadline, timeout, conn)
            future = conn.exchange(message)
            sent = loop.time()
            if progress is not None:
                progress.sent_at = sent
            expected, rate = floor or (0, 0.0)
            slow_at = sent + FIRST_BYTE_GRACE + expected / rate if rate > 0 else math.inf
            if slow_at < deadline:
                timer = loop.call_at(slow_at, _too_slow, conn, rate)
            else:
                timer = loop.call_at(deadline, _expire, conn, timeout)
            try:
                return await future
            except StaleConnection:
                # The peer closed kept-alive connections (restart, its idle timer): the request
                # never reached it, so asking once more on a fresh connection is safe.
                if attempt == 2:
                    raise
                self._drop_idle(pool)
            finally:
                timer.cancel()
                self._release(pool, conn)
        raise AssertionError("unreachable")

    async def _acquire(
        self, pool: _Pool, deadline: float, timeout: float, dead: ClientConnection | None
    ) -> ClientConnection:
        assert self._loop is not None
        if dead is not None:
            self._drop(dead)
        while True:
            if self._loop is None:
                raise PeerUnreachable(pool.peer, "client closed")
            while pool.idle:
                conn = pool.idle.pop()
                if conn.reusable:
                    return conn
                self._drop(conn)
            if pool.count < self._per_peer:
                if self._total < self._max_total or self._evict_idle():
                    return await self._connect(pool, deadline, timeout)
                waiters = self._global_waiters
            else:
                waiters = pool.waiters
            waiter: asyncio.Future[ClientConnection | None] = self._loop.create_future()
            waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    handed = await waiter
            except BaseException as exc:
                late = None if not waiter.done() or waiter.cancelled() else waiter.result()
                if late is not None:
                    self._release(pool, late)  # handed over just as we gave up
                if isinstance(exc, TimeoutError):
                    raise PeerTimeout(pool.peer, f"no answer within {timeout} s") from None
                raise
            if handed is not None:
                if handed.reusable:
                    return handed
                self._drop(handed)  # lost between being handed over and our turn to run

    async def _connect(self, pool: _Pool, deadline: float, timeout: float) -> ClientConnection:
        assert self._loop is not None
        conn = ClientConnection(pool.peer, self._max_body, self._heads)
        conn.on_lost = self._lost
        self._owner[conn] = pool
        pool.count += 1
        self._total += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self._loop.create_connection(
                    lambda: conn, pool.host, pool.port, local_addr=self._source(pool.host)
                )
        except TimeoutError:
            self._drop(conn)
            raise PeerTimeout(pool.peer, f"no answer within {timeout} s") from None
        except OSError as exc:
            self._drop(conn)
            raise PeerUnreachable(pool.peer, str(exc) or type(exc).__name__) from exc
        except BaseException:
            self._drop(conn)
            raise
        if self._loop is None:
            conn.fail(PeerUnreachable(pool.peer, "client closed"))
            raise PeerUnreachable(pool.peer, "client closed")
        if not conn.reusable:  # made, then closed by the peer before this task ran again
            self._drop(conn)
            raise PeerUnreachable(pool.peer, "connection closed as soon as it was made")
        return conn

    def _release(self, pool: _Pool, conn: ClientConnection) -> None:
        """Give a connection back after an exchange: to a waiter, to the idle list, or away."""
        if not conn.reusable or self._loop is None:
            conn.fail(PeerUnreachable(pool.peer, "exchange abandoned"))  # no-op if it ended
            self._drop(conn)
            return
        while pool.waiters:
            waiter = pool.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if self._global_waiters and any(not w.done() for w in self._global_waiters):
            self._drop(conn)  # at the total limit, a request to another peer needs the slot
            return
        conn.idle_since = self._loop.time()
        pool.idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._keepalive, self._sweep)

    def _drop(self, conn: ClientConnection) -> None:
        """Stop counting ``conn`` (closing it) and let a waiter open another."""
        pool = self._owner.pop(conn, None)
        if pool is None:
            return
        conn.close()
        if conn in pool.idle:
            pool.idle.remove(conn)
        pool.count -= 1
        self._total -= 1
        _wake_one(pool.waiters) or _wake_one(self._global_waiters)

    def _drop_idle(self, pool: _Pool) -> None:
        while pool.idle:
            self._drop(pool.idle[-1])

    def _lost(self, conn: ClientConnection) -> None:
        self._drop(conn)
        self._closing.discard(conn)
        if not self._closing and self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def _evict_idle(self) -> bool:
        """At the global limit: close the longest-idle connection to another peer, if any."""
        oldest: ClientConnection | None = None
        for pool in self._pools.values():
            if pool.idle and (oldest is None or pool.idle[0].idle_since < oldest.idle_since):
                oldest = pool.idle[0]
        if oldest is None:
            return False
        self._drop(oldest)
        return True

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive time; forget unused peers."""
        self._sweeper = None
        if self._loop is None:
            return
        expired = self._loop.time() - self._keepalive
        for pool in list(self._pools.values()):
            for conn in [c for c in pool.idle if c.idle_since <= expired]:
                self._drop(conn)
        self._forget_unused()
        if any(pool.idle for pool in self._pools.values()):
            self._sweeper = self._loop.call_later(self._keepalive / 2, self._sweep)

    def _forget_unused(self) -> None:
        for peer, pool in list(self._pools.items()):
            if not pool.count and not pool.waiters:
                del self._pools[peer]

    def _new_pool(self, peer: str) -> _Pool:
        pool = _Pool(peer, self._path)  # raises PeerError for anything but ip:port
        if len(self._pools) >= _MAX_IDLE_POOLS:
            self._forget_unused()
        self._pools[peer] = pool
        return pool


def _expire(conn: ClientConnection, timeout: float) -> None:
    conn.fail(PeerTimeout(conn.peer, f"no answer within {timeout} s"))


def _too_slow(conn: ClientConnection, rate: float) -> None:
    conn.fail(PeerSlow(conn.peer, f"answer slower than {rate:.0f} bytes/s"))


def _wake_one(waiters: deque[asyncio.Future[ClientConnection | None]]) -> bool:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return True
    return False


def _wake_all(waiters: deque[asyncio.Future[ClientConnection | None]]) -> None:
    while _wake_one(waiters):
        pass


def _address(peer: str) -> tuple[str, int]:
    """``(ip, port)`` of a bare ``ip:port`` (IPv6 in brackets); no DNS names."""
    host, _, port = peer.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise PeerError(peer, "not an ip:port address") from None
    if not 0 < number < 65536:
        raise PeerError(peer, f"port {number} out of range")
    return host, number
