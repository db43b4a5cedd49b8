"""MS-PCCRD discovery over asyncio: answer probes for held segments, find peers for ours.

Protocol decisions are made in :mod:`peerdistd.proto.pccrd_responder`; this driver moves
datagrams, arms the back-off timers, gathers answers for a window and caches them briefly.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

from peerdistd.errors import ConfigError, DecodeError
from peerdistd.logs import RateLimitedLogger
from peerdistd.net.discovery_links import Links, Transport
from peerdistd.net.discovery_sockets import NetInterface, resolve_interfaces
from peerdistd.net.discovery_watch import AddressWatch
from peerdistd.proto.pccrd import (
    APP_MAX_DELAY_MS,
    GROUP_V4,
    GROUP_V6,
    MAX_MESSAGE_SIZE,
    PORT,
    Probe,
    new_message_id,
    parse_probe_match,
    split_for_probes,
)
from peerdistd.proto.pccrd_responder import (
    Address,
    Ignore,
    PlannedReply,
    Responder,
)

log = logging.getLogger(__name__)


class SegmentDirectory(Protocol):
    """What discovery needs from the block cache (implemented by the daemon)."""

    def block_counts(self, segment_ids: Sequence[bytes]) -> dict[bytes, int]:
        """Blocks held of each of ``segment_ids``; held segments only."""
        ...


@dataclass(frozen=True, slots=True)
class PeerHit:
    """A peer's PCCRR address (``ip:port``, from XAddrs) and how many blocks it has."""

    xaddr: str
    block_count: int


@dataclass(frozen=True, slots=True)
class DiscoveryEvent:
    """``kind``: probe_sent, probe_received, probe_answered, match_received or dropped.

    ``detail`` says why a datagram was dropped or a probe not answered (``no_match``).
    """

    kind: str
    peer: str
    segment_ids: tuple[bytes, ...] = ()
    detail: str = ""


@dataclass(slots=True)
class DiscoveryStats:
    """Datagram counters; ``dropped`` is keyed by reason."""

    probes_sent: int = 0
    probes_received: int = 0
    matches_sent: int = 0
    matches_received: int = 0
    dropped: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _Pending:
    ids: tuple[bytes, ...]
    hits: dict[bytes, dict[str, int]] = field(default_factory=dict)
    # Set once every id has at least one holder: the prober may then stop early.
    covered: asyncio.Event = field(default_factory=asyncio.Event)


class Discovery:
    """PCCRD on the interfaces of ``interface_addresses`` (None: every interface)."""

    def __init__(
        self,
        directory: SegmentDirectory,
        *,
        interface_addresses: Sequence[str] | None,
        advertise: str,
        port: int = PORT,
        group_v4: str = GROUP_V4,
        group_v6: str = GROUP_V6,
        rate_limit: float = 500.0,
        on_event: Callable[[DiscoveryEvent], None] | None = None,
        max_delay_ms: int = APP_MAX_DELAY_MS,
        instance_id: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        recheck_interval: float = 30.0,
    ) -> None:
        if not 0 < port < 65536:
            raise ConfigError("peers.discovery_port", f"{port} is not a UDP port")
        self.directory = directory
        self.interface_addresses = interface_addresses
        self.advertise = advertise
        self.port = port
        self.groups = {socket.AF_INET: group_v4, socket.AF_INET6: group_v6}
        self.stats = DiscoveryStats()
        self._on_event = on_event
        self._max_delay_ms = max_delay_ms
        # 3.4: InstanceId goes up with each service start.
        self._instance_id = instance_id if instance_id is not None else int(time.time())
        self._remote_log = RateLimitedLogger(log)
        self._pending: dict[str, _Pending] = {}
        self._links = Links(
            self.groups,
            port,
            strict=interface_addresses is not None,
            on_datagram=self._datagram,
            on_error=self._send_error,
        )
        # Addresses come and go, and a tentative IPv6 one becomes usable: re-check then.
        self._watch = AddressWatch(self.refresh, interval=recheck_interval)
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._timer_ids = itertools.count()
        # Built here so a bad ``advertise`` fails at once; interfaces are set on entry.
        self._responder = Responder(
            advertise,
            (),
            instance_id=self._instance_id,
            max_delay_ms=max_delay_ms,
            rate_limit=rate_limit,
            clock=clock,
        )

    @property
    def _unicast(self) -> dict[str, tuple[NetInterface, Transport]]:
        return self._links.unicast

    @property
    def _senders(self) -> list[tuple[NetInterface, Transport]]:
        return self._links.senders

    @property
    def interfaces(self) -> list[NetInterface]:
        return [iface for iface, _ in self._unicast.values()]

    @property
    def unicast_addresses(self) -> list[Address]:
        """Where our probes come from and our answers go out (one per interface address)."""
        return [t.get_extra_info("sockname") for _, t in self._unicast.values()]

    async def __aenter__(self) -> Discovery:
        interfaces = resolve_interfaces(self.interface_addresses)
        # Probes may arrive while later sockets open: answer on the subnets asked for so far.
        self._responder.interfaces = tuple(i.local for i in interfaces)
        try:
            for iface in interfaces:
                await self._links.open(iface, at_start=True)
            if not self._unicast:
                log.warning("discovery waits for an interface address it can use")
            self._responder.interfaces = tuple(i.local for i in self.interfaces)
            self._watch.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Cancel planned answers and close every socket."""
        await self._watch.aclose()
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        await self._links.aclose()

    async def refresh(self) -> None:
        """Open addresses that appeared or became usable since start; close those gone."""
        await self._links.update(resolve_interfaces(self.interface_addresses, missing_ok=True))
        self._responder.interfaces = tuple(i.local for i in self.interfaces)

    async def find(
        self, segment_ids: Sequence[bytes], *, window: float = 0.3, version: int = 1
    ) -> dict[bytes, list[PeerHit]]:
        """Who holds each of ``segment_ids`` (every id is a key), from answers within ``window``.

        Always asks the network: remembering answers is the swarm's holder directory's job
        (:mod:`peerdistd.net.holders`), one cache with one policy."""
        ids = list(dict.fromkeys(segment_ids))
        found = await self._probe(ids, window, version) if ids else {}
        return {sid: [PeerHit(x, n) for x, n in found.get(sid, {}).items()] for sid in ids}

    async def _probe(
        self, segment_ids: list[bytes], window: float, version: int
    ) -> dict[bytes, dict[str, int]]:
        mine: list[_Pending] = []
        try:
            for group_ids in split_for_probes(segment_ids, version):
                message_id = new_message_id()
                pending = self._pending[message_id] = _Pending(group_ids)
                mine.append(pending)
                payload = Probe(message_id, group_ids, version).to_bytes()
                for iface, transport in self._senders:
                    transport.sendto(payload, (self.groups[iface.family], self.port))
                    self.stats.probes_sent += 1
                    self._emit("probe_sent", self.groups[iface.family], group_ids)
            # 3.4: never wait less than the longest back-off a responder may take. Once every
            # id has a holder, wait only that back-off more (every responder that got the
            # probe has answered by then) instead of the whole window: a read's first block
            # then comes ~100 ms sooner.
            settle = self._max_delay_ms / 1000
            deadline = asyncio.get_running_loop().time() + max(window, settle)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.gather(*(p.covered.wait() for p in mine))
                    await asyncio.sleep(settle)
        finally:
            for message_id in [m for m, p in self._pending.items() if p in mine]:
                del self._pending[message_id]
        found: dict[bytes, dict[str, int]] = {}
        for pending in mine:
            for sid, peers in pending.hits.items():
                found.setdefault(sid, {}).update(peers)
        return found

    def _datagram(self, data: bytes, addr: Address, via: NetInterface | None) -> None:
        addr = _scoped(addr, self.interfaces)
        try:
            if len(data) > MAX_MESSAGE_SIZE:
                self._drop("oversized", addr, f"{len(data)} bytes")
            elif via is None:
                self._on_probe(data, addr)
            else:
                self._on_match(data, addr)
        except DecodeError as exc:
            self._drop("malformed", addr, str(exc))
        except Exception:  # a failing directory must not close the socket
            log.exception("discovery could not handle a datagram from %s", addr[0])
            self.stats.dropped["internal_error"] += 1

    def _on_probe(self, data: bytes, addr: Address) -> None:
        decision = self._responder.decide(
            data, addr, self.directory.block_counts, own=self._pending.keys()
        )
        if decision is Ignore.OFF_SUBNET or decision is Ignore.RATE_LIMITED:
            self._drop(decision.value, addr)
            return
        if decision is Ignore.OWN_PROBE:
            return
        self.stats.probes_received += 1
        if not isinstance(decision, PlannedReply):
            self._emit("probe_received", _peer(addr), (), decision.value)
        else:
            self._emit("probe_received", _peer(addr), decision.segment_ids, "answering")
            loop = asyncio.get_running_loop()
            key = next(self._timer_ids)
            delay = decision.delay_ms / 1000
            self._timers[key] = loop.call_later(delay, self._send_reply, decision, key)

    def _send_reply(self, planned: PlannedReply, key: int) -> None:
        del self._timers[key]
        entry = self._unicast.get(planned.via)
        if entry is None:
            return
        entry[1].sendto(planned.payload, planned.destination)
        self.stats.matches_sent += 1
        self._emit("probe_answered", _peer(planned.destination), planned.segment_ids)

    def _on_match(self, data: bytes, addr: Address) -> None:
        if self._responder.interface_for(str(addr[0])) is None:
            self._drop(Ignore.OFF_SUBNET.value, addr)  # 3.1: replies from off-subnet are dropped
            return
        requested = {m: p.ids for m, p in self._pending.items()}
        match = parse_probe_match(data, requested)
        pending = self._pending.get(match.relates_to)
        if pending is None:
            self._drop("unsolicited", addr, match.relates_to)
            return
        if match.endpoint == self._responder.endpoint:
            return  # our own answer
        self.stats.matches_received += 1
        counts = {sid: n for sid, n in match.counts.items() if sid in pending.ids}
        for sid, n in counts.items():
            peers = pending.hits.setdefault(sid, {})
            for xaddr in match.xaddrs:
                peers[xaddr] = max(n, peers.get(xaddr, 0))
        if len(pending.hits) == len(pending.ids):
            pending.covered.set()
        self._emit("match_received", _peer(addr), tuple(counts))

    def _send_error(self, exc: Exception) -> None:
        self._remote_log.warning(("send", type(exc)), "discovery send failed: %s", exc)
        self.stats.dropped["send_error"] += 1

    def _drop(self, reason: str, addr: Address, detail: str = "") -> None:
        self.stats.dropped[reason] += 1
        self._remote_log.warning(
            reason, "discovery dropped a datagram from %s: %s %s", addr[0], reason, detail
        )
        self._emit("dropped", _peer(addr), (), reason)

    def _emit(self, kind: str, peer: str, ids: tuple[bytes, ...], detail: str = "") -> None:
        if self._on_event is not None:
            self._on_event(DiscoveryEvent(kind, peer, ids, detail))


def _scoped(addr: Address, interfaces: Sequence[NetInterface]) -> Address:
    """A link-local source named as our link-local addresses are (``fe80::3%eth0``).

    Python gives the scope only as an index (sin6_scope_id); the responder picks the interface
    to answer from by that name, which matters once several interfaces share fe80::/64.
    """
    if len(addr) < 4 or not addr[3] or "%" in str(addr[0]):
        return addr
    for iface in interfaces:
        if iface.index == addr[3]:
            return (f"{addr[0]}%{iface.name}", *addr[1:])
    return addr


def _peer(addr: Address) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
