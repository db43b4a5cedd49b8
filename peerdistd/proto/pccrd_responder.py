"""MS-PCCRD responder: decides, without IO, whether and how to answer a Probe.

Input is the datagram, its source and a lookup of held segments; output is a planned reply
(payload, destination, the local address to send it from, and the back-off delay to wait
first) or the reason for staying silent. Timing and randomness are injected.
"""

from __future__ import annotations

import ipaddress
import random
import time
import uuid
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeAlias

from peerdistd.errors import ConfigError, DecodeError
from peerdistd.proto.pccrd import (
    APP_MAX_DELAY_MS,
    ProbeMatch,
    check_xaddr,
    new_message_id,
    parse_probe,
)

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = tuple[Any, ...]  # a socket address: (host, port[, flowinfo, scope_id])
HeldLookup: TypeAlias = Callable[[Sequence[bytes]], Mapping[bytes, int]]


class Ignore(Enum):
    """Why a well-formed datagram got no answer."""

    OFF_SUBNET = "off_subnet"  # 3.1: only the local subnet is answered
    OWN_PROBE = "own_probe"
    NO_MATCH = "no_match"  # 3.2.4.1: reply only if at least one id matches
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True, slots=True)
class LocalInterface:
    """One of our addresses and the subnet it is on (``fe80::…%ifname`` keeps its scope)."""

    address: str
    network: IPNetwork

    @classmethod
    def of(cls, address: str, prefix: int) -> LocalInterface:
        host = address.partition("%")[0]
        return cls(address, ipaddress.ip_network(f"{host}/{prefix}", strict=False))


ON_LINK_SOURCES = 1024  # source addresses whose interface is remembered


@dataclass(frozen=True, slots=True)
class PlannedReply:
    """Send ``payload`` from ``via`` to ``destination`` after ``delay_ms`` milliseconds."""

    destination: Address
    via: str
    delay_ms: int
    payload: bytes
    relates_to: str
    segment_ids: tuple[bytes, ...]


def is_local_source(source: str, networks: Iterable[IPNetwork]) -> bool:
    """True when ``source`` lies in one of ``networks`` (3.1: drop off-subnet datagrams)."""
    try:
        addr = ipaddress.ip_address(source.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in networks)


def local_interface_for(source: str, interfaces: Sequence[LocalInterface]) -> LocalInterface | None:
    """Our interface on the source's subnet, or None: off-subnet (same scope preferred)."""
    on_link = [i for i in interfaces if is_local_source(source, [i.network])]
    scope = source.partition("%")[2]
    for iface in on_link:
        if iface.address.partition("%")[2] == scope:
            return iface
    return on_link[0] if on_link else None


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens, self._stamp = burst, clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class Responder:
    """The answering half of PCCRD (3.2.4.1): one per service start (one InstanceId)."""

    def __init__(
        self,
        advertise: str,
        interfaces: Sequence[LocalInterface],
        *,
        instance_id: int,
        endpoint: str | None = None,
        max_delay_ms: int = APP_MAX_DELAY_MS,
        rate_limit: float = 500.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        try:
            host, self._port = check_xaddr(advertise)
        except DecodeError as exc:
            raise ConfigError("peers.advertise", f"{advertise!r} is not ip:port") from exc
        # A wildcard host means "the address of the interface the probe came in on".
        self._host = None if _is_unspecified(host) else host
        self.advertise = advertise
        # Source address -> our interface on its subnet (None: off-subnet). Parsing the
        # address and matching it against every network cost a fifth of answering a probe,
        # and ten nodes reading together receive ~2,000 probes each from the same nine
        # addresses. Bounded (the sources are remote input); emptied with the interfaces.
        self._on_link: dict[str, LocalInterface | None] = {}
        self.interfaces = tuple(interfaces)
        self.instance_id = instance_id
        self.endpoint = endpoint or uuid.uuid4().urn  # 3.4: a new GUID per service start
        self.max_delay_ms = max(1, max_delay_ms)
        self.message_number = 0  # 3.4: counts every message sent, the first is 1
        self._bucket = TokenBucket(rate_limit, max(1.0, rate_limit), clock)
        self._rng = rng or random.Random()  # noqa: S311 - a back-off, not a secret

    @property
    def interfaces(self) -> tuple[LocalInterface, ...]:
        return self._interfaces

    @interfaces.setter
    def interfaces(self, value: Sequence[LocalInterface]) -> None:
        self._interfaces = tuple(value)
        self._on_link.clear()

    def interface_for(self, source: str) -> LocalInterface | None:
        """:func:`local_interface_for` over our interfaces, remembered per source."""
        try:
            return self._on_link[source]
        except KeyError:
            pass
        if len(self._on_link) >= ON_LINK_SOURCES:
            self._on_link.clear()
        iface = self._on_link[source] = local_interface_for(source, self._interfaces)
        return iface

    def decide(
        self,
        data: bytes,
        source: Address,
        held: HeldLookup,
        *,
        own: Container[str] = (),
    ) -> PlannedReply | Ignore:
        """Plan the answer to ``data`` from ``source``; DecodeError if it is not a Probe."""
        iface = self.interface_for(str(source[0]))
        if iface is None:
            return Ignore.OFF_SUBNET
        probe = parse_probe(data)
        if probe.message_id in own:
            return Ignore.OWN_PROBE
        counts = held(probe.segment_ids)
        if probe.version == 1:
            matched = [(s, counts[s]) for s in dict.fromkeys(probe.segment_ids) if counts.get(s)]
            block_counts = tuple(matched)
        else:  # the V2 answer flags every requested id by position (2.2.3.3)
            block_counts = tuple((s, min(counts.get(s, 0), 1)) for s in probe.segment_ids)
        if not any(n > 0 for _, n in block_counts):
            return Ignore.NO_MATCH
        if not self._bucket.take():
            return Ignore.RATE_LIMITED
        self.message_number += 1
        reply = ProbeMatch(
            new_message_id(), probe.message_id, (self._xaddr(iface),), block_counts,
            probe.version, self.endpoint, self.instance_id, self.message_number,
        )  # fmt: skip
        return PlannedReply(
            destination=source,
            via=iface.address,
            delay_ms=self._rng.randint(1, self.max_delay_ms),  # 3.4: 1 ms .. APP_MAX_DELAY
            payload=reply.to_bytes(),
            relates_to=probe.message_id,
            segment_ids=tuple(s for s, n in block_counts if n > 0),
        )

    def respond(
        self, data: bytes, source: Address, held: HeldLookup, *, own: Container[str] = ()
    ) -> PlannedReply | None:
        """:meth:`decide`, with every reason for silence folded into None."""
        planned = self.decide(data, source, held, own=own)
        return planned if isinstance(planned, PlannedReply) else None

    def _xaddr(self, iface: LocalInterface) -> str:
        host = self._host or iface.address.partition("%")[0]
        return f"[{host}]:{self._port}" if ":" in host else f"{host}:{self._port}"
