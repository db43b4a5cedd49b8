"""Single-flight claims over asyncio: the multicast driver of :mod:`peerdistd.proto.flight_board`.

It moves claim datagrams on their own group and port (same interfaces and scoping as PCCRD
discovery, see :mod:`.discovery_links`), renews this node's claims on a timer, and wakes the
reads that wait for a piece when its state changes. Decisions are the board's.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from peerdistd.errors import DecodeError
from peerdistd.logs import RateLimitedLogger
from peerdistd.net.discovery_links import Links
from peerdistd.net.discovery_sockets import NetInterface, resolve_interfaces
from peerdistd.proto import flight
from peerdistd.proto.flight import Kind, Message, PieceId
from peerdistd.proto.flight_board import Board, Lookup
from peerdistd.proto.pccrd_responder import Address
from peerdistd.proto.pccrd_xml import check_xaddr

log = logging.getLogger(__name__)

MAX_SOURCES = 1024  # rate-limit buckets, keyed by remote address (bounded)


@dataclass(slots=True)
class FlightStats:
    sent: int = 0
    received: int = 0
    dropped: int = 0
    claims_won: int = 0
    claims_lost: int = 0
    claims_released: int = 0


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens, self.stamp = tokens, stamp


class FlightNet:
    """This node's side of the claims protocol; an async context manager."""

    def __init__(
        self,
        node: bytes,
        endpoint: str,
        *,
        interface_addresses: Sequence[str] | None,
        port: int = flight.PORT,
        group_v4: str = flight.GROUP_V4,
        group_v6: str = flight.GROUP_V6,
        ttl: float = 2.0,
        rate_limit: float = 1000.0,
    ) -> None:
        self.board = Board(node, endpoint, ttl=ttl)
        self.stats = FlightStats()
        self.interface_addresses = interface_addresses
        self.groups = {socket.AF_INET: group_v4, socket.AF_INET6: group_v6}
        self.port = port
        self.rate_limit = rate_limit
        self._links = Links(
            self.groups, port, strict=False, on_datagram=self._datagram, on_error=self._error
        )
        self._remote_log = RateLimitedLogger(log)
        self._waiters: dict[PieceId, asyncio.Event] = {}
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._ticker: asyncio.Task[None] | None = None
        self._done_listeners: list[Callable[[PieceId, str], None]] = []

    async def __aenter__(self) -> FlightNet:
        try:
            for iface in resolve_interfaces(self.interface_addresses, missing_ok=True):
                await self._links.open(iface, at_start=True)
        except BaseException:
            await self._links.aclose()
            raise
        self._ticker = asyncio.ensure_future(self._tick_forever())
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        self._send_all(self.board.release(self.board.ours()))
        await self._links.aclose()

    async def refresh(self, interfaces: list[NetInterface]) -> None:
        await self._links.update(interfaces)

    # -- the engine's seam ---------------------------------------------------------------

    @property
    def ttl(self) -> float:
        return self.board.ttl

    def lookup(self, piece: PieceId) -> Lookup:
        return self.board.lookup(piece, time.monotonic())

    async def claim(self, piece: PieceId, window: float) -> bool:
        """Claim ``piece``; True if this node won it after the contention ``window`` (as
        the board stretches it while it sees pieces claimed twice)."""
        self._send(self.board.claim(piece, time.monotonic()))
        window = self.board.window(window)
        if window > 0:
            await asyncio.sleep(window)
        hold = self.board.settle(piece, time.monotonic())
        if hold is None:
            self.stats.claims_lost += 1
            return False
        self.stats.claims_won += 1
        self._send(hold)
        return True

    def progress(self, piece: PieceId, held: int, total: int) -> None:
        done = self.board.progress(piece, held, total, time.monotonic())
        if done is not None:
            self._send(done)
            self._wake({piece})

    def release(self, pieces: list[PieceId]) -> None:
        msgs = self.board.release(pieces)
        self.stats.claims_released += sum(len(m.pieces) for m in msgs)
        self._send_all(msgs)
        self._wake(set(pieces))

    def forget(self, piece: PieceId) -> None:
        self.board.forget(piece)

    def on_done(self, listener: Callable[[PieceId, str], None]) -> None:
        """Call ``listener(piece, endpoint)`` for every DONE another node sends."""
        self._done_listeners.append(listener)

    async def wait(self, piece: PieceId, timeout: float) -> None:
        """Return when ``piece``'s state changes, or after ``timeout`` seconds."""
        event = self._waiters.get(piece)
        if event is None:
            event = self._waiters[piece] = asyncio.Event()
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                await event.wait()
        except TimeoutError:
            pass
        finally:
            if self._waiters.get(piece) is event and event.is_set():
                del self._waiters[piece]

    # -- datagrams -----------------------------------------------------------------------

    def _datagram(self, data: bytes, addr: Address, via: NetInterface | None) -> None:
        if len(data) > flight.MAX_DATAGRAM or not self._allow(str(addr[0])):
            self.stats.dropped += 1
            return
        try:
            msg = flight.parse(data)
        except DecodeError as exc:
            self.stats.dropped += 1
            self._remote_log.warning(
                "malformed", "single-flight datagram from %s dropped: %s", addr[0], exc
            )
            return
        if msg.node == self.board.node:
            return  # our own, looped back
        self.stats.received += 1
        replies, changed = self.board.observe(msg, time.monotonic())
        self._send_all(replies)
        self._wake(changed)
        if msg.kind is Kind.DONE and _sent_by(msg.endpoint, str(addr[0])):
            for state in msg.pieces:
                for listener in self._done_listeners:
                    try:
                        listener(state.piece, msg.endpoint)
                    except Exception:  # a listener's failure is not the datagram's
                        log.exception("single-flight DONE listener failed")

    def _allow(self, source: str) -> bool:
        """A token bucket per source address (bounded table): a flood costs little."""
        now = time.monotonic()
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = _Bucket(self.rate_limit, now)
            while len(self._buckets) > MAX_SOURCES:
                self._buckets.popitem(last=False)
        bucket.tokens = min(self.rate_limit, bucket.tokens + (now - bucket.stamp) * self.rate_limit)
        bucket.stamp = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _wake(self, pieces: set[PieceId]) -> None:
        for piece in pieces:
            event = self._waiters.pop(piece, None)
            if event is not None:
                event.set()

    def _send_all(self, msgs: list[Message]) -> None:
        for msg in msgs:
            self._send(msg)

    def _send(self, msg: Message) -> None:
        payload = bytes(msg)
        for iface, transport in self._links.senders:
            transport.sendto(payload, (self.groups[iface.family], self.port))
            self.stats.sent += 1

    def _error(self, exc: Exception) -> None:
        self._remote_log.warning(("send", type(exc)), "single-flight send failed: %s", exc)

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.board.ttl / 4)
            msgs, stalled = self.board.tick(time.monotonic())
            if stalled:
                self.stats.claims_released += len(stalled)
                log.debug("released %d stalled claims", len(stalled))
            self._send_all(msgs)
            self._wake(set(stalled))


def _sent_by(endpoint: str, source: str) -> bool:
    """Whether ``endpoint`` ("ip:port", "[v6]:port") is on the datagram's source address. A
    DONE makes nodes reading the content whole connect to its endpoint unasked: one naming
    another address (a host's own loopback service, a third machine) is not acted on."""
    try:
        host, _port = check_xaddr(endpoint)
        named = ipaddress.ip_address(host.partition("%")[0])
        sender = ipaddress.ip_address(source.partition("%")[0])
    except (DecodeError, ValueError):
        return False
    return named == sender
