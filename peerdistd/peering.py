"""Composition of the peer side of a node: retrieval server, discovery, swarm, zeroconf.

Part of the composition root (beside ``daemon.py``): it adapts the block cache to the
``typing.Protocol`` seams of ``peerdistd.net`` and wires the parts from the configuration.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from peerdistd import errors
from peerdistd.config import Config, PeersConfig
from peerdistd.engine.ports import BlockStore, PeerNetwork
from peerdistd.engine.stats import Counters
from peerdistd.hosted import (
    HostedCacheServer,
    hosted_cache_address,
    segment_offers,
    start_hosted_cache,
)
from peerdistd.hosted import offerer as make_offerer
from peerdistd.net.discovery import Discovery
from peerdistd.net.discovery_sockets import resolve_interfaces
from peerdistd.net.flight import FlightNet
from peerdistd.net.hosted_cache_client import HostedCacheFirst, Offerer
from peerdistd.net.mdns import Mdns
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.net.retrieval_server import RetrievalServer
from peerdistd.net.swarm import Swarm
from peerdistd.store.blockcache import BlockCache

log = logging.getLogger(__name__)

DEFAULT_LISTEN = PeersConfig().listen
UNPRIVILEGED_PORT = 8080


class CacheSource:
    """The block cache seen by the retrieval server and the discovery responder.

    Peer input reaches the cache through here, so hostile ids (wrong sizes) that the cache
    rejects with DecodeError simply mean "not held". Peers see only proven blocks, re-hashed
    on every send (docs/trust.md): a peer cannot say which content information it holds.
    """

    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        try:
            record = self.cache.segment(segment_id)
        except errors.PeerDistError:
            return None
        return None if record is None else record.secret

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        try:
            return self.cache.proven_blocks(segment_id)
        except errors.PeerDistError:
            return []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        try:
            return self.cache.read_proven(segment_id, index)
        except errors.PeerDistError:
            return None

    def read_run(
        self, segment_id: bytes, first: int, count: int
    ) -> tuple[Sequence[bytes | memoryview], int]:
        """Blocks of a run request (RUN_PATH): one lock and one pread for all of them."""
        try:
            return self.cache.read_proven_run(segment_id, first, count)
        except errors.PeerDistError:
            return [], 0

    def block_counts(self, segment_ids: Sequence[bytes]) -> dict[bytes, int]:
        try:
            return self.cache.block_counts(segment_ids, proven_only=True)
        except errors.PeerDistError:
            return {}


class ServedTo:
    """Block bytes served to each peer address (bounded: peers are remote input)."""

    LIMIT = 1024

    def __init__(self) -> None:
        self.by_host: OrderedDict[str, int] = OrderedDict()
        self.last_seen: dict[str, float] = {}

    def __call__(self, peer: str, count: int) -> None:
        host = _host(peer)
        self.by_host[host] = self.by_host.get(host, 0) + count
        self.by_host.move_to_end(host)
        self.last_seen[host] = time.time()
        while len(self.by_host) > self.LIMIT:
            gone, _ = self.by_host.popitem(last=False)
            self.last_seen.pop(gone, None)


@dataclass
class PeerNode:
    """The running peer side: the swarm, what it advertises and hosted cache mode's parts.

    ``network`` is what the engine reads through: the swarm, or the hosted cache first.
    """

    swarm: Swarm
    advertise: str
    server: RetrievalServer
    discovery: Discovery
    mdns: Mdns | None = None
    served_to: ServedTo = field(default_factory=ServedTo)
    hosted: HostedCacheServer | None = None
    offerer: Offerer | None = None
    network: PeerNetwork | None = None
    flight: FlightNet | None = None  # single-flight claims (peers.single_flight)

    def __post_init__(self) -> None:
        if self.network is None:
            self.network = self.swarm

    def engine_store(self, cache: BlockCache) -> BlockStore:
        """The block store the engine writes through: offering completed segments if a hosted
        cache is configured (hosted_cache.server)."""
        if self.offerer is not None:
            cache.on_segment_complete = segment_offers(cache, self.offerer.offer)
        return cache

    def hosted_stats(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.hosted is not None:
            out |= self.hosted.puller.stats.snapshot()
        if self.offerer is not None:
            out |= self.offerer.stats.snapshot()
        return out

    def counters(self) -> dict[str, float]:
        """The peer side's counters in ``GET /v1/status`` (docs/api.md)."""
        swarm, discovery = self.swarm, self.discovery.stats
        out = {
            "bad_blocks": float(swarm.stats.bad_blocks),
            "hedges": float(swarm.stats.hedges),
            "slow_answers": float(swarm.stats.slow_answers),
            "busy_answers": float(swarm.stats.busy_answers),
            "peer_errors": float(swarm.stats.peer_errors),
            "banned_peers": float(swarm.active_bans()),
            "peers_known": float(len(self.peers())),
            "probes_sent": float(discovery.probes_sent),
            "probes_received": float(discovery.probes_received),
            "matches_sent": float(discovery.matches_sent),
            "matches_received": float(discovery.matches_received),
            "datagrams_dropped": float(sum(discovery.dropped.values())),
            # Flow control ("Reads are streams"): busy answers peers gave us, and our own
            # uploads in progress (the Active Client Count of [MS-PCCRR] 3.2.1).
            "peer_busy_answers": float(swarm.stats.busy_answers),
            "peers_at_limit": float(swarm.windows.at_limit()),
            "uploads_active": float(self.server.active_uploads),
        }
        if self.flight is not None:
            # Single flight (docs/single-flight.md): pieces this node won and lost the claim
            # of, and pieces it saw claimed by two nodes at once (each fetched twice).
            out |= {
                "claims_won": float(self.flight.stats.claims_won),
                "claims_lost": float(self.flight.stats.claims_lost),
                "claims_released": float(self.flight.stats.claims_released),
                "claims_doubled": float(self.flight.board.doubled),
            }
        return out

    def peers(self) -> list[Mapping[str, Any]]:
        """Every peer known (zeroconf, discovery answers, clients served) with its counters."""
        rows: dict[str, dict[str, Any]] = {}

        def row(address: str, source: str) -> dict[str, Any]:
            if address not in rows:
                rows[address] = {
                    "node_id": "", "address": address, "last_seen": 0.0, "source": source,
                    "bytes_from": 0, "bytes_to": 0, "bad_blocks": 0, "errors": 0,
                    "banned": self.swarm.banned(address),
                }  # fmt: skip
            return rows[address]

        for p in self.mdns.peers_json() if self.mdns is not None else ():
            entry = row(str(p["address"]), str(p.get("source", "zeroconf")))
            entry.update(node_id=p["node_id"], last_seen=p["last_seen"])
        for address, stats in self.swarm.peers.items():
            entry = row(address, "pccrd")
            entry["bytes_from"] = stats.bytes_from
            entry["bad_blocks"] = stats.bad_blocks
            entry["errors"] = stats.errors
            entry["last_seen"] = max(float(entry["last_seen"]), stats.last_seen)
        by_host = {_host(address): entry for address, entry in rows.items()}
        for host, count in self.served_to.by_host.items():
            entry = by_host.get(host) or row(host, "client")
            entry["bytes_to"] = count
            entry["last_seen"] = max(float(entry["last_seen"]), self.served_to.last_seen[host])
        return sorted(rows.values(), key=lambda e: str(e["address"]))


def _host(endpoint: str) -> str:
    """The host of ``ip:port`` / ``[v6]:port`` (or of a bare host)."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return endpoint
    return host.strip("[]")


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def _primary_address(version: int) -> str:
    """The address discovery answers carry when the listener is on every address: the first
    LAN address of the listener's family, IPv6 in brackets (peers.advertise overrides it)."""
    # asyncio binds "::" with IPV6_V6ONLY, so only the listener's own family reaches it; a
    # link-local address needs a scope that means nothing on another host.
    for iface in resolve_interfaces(None):
        addr = ipaddress.ip_address(iface.host)
        if addr.version == version and not (addr.is_loopback or addr.is_link_local):
            return iface.host if version == 4 else f"[{iface.host}]"
    fallback = "127.0.0.1" if version == 4 else "[::1]"
    log.warning("no LAN address found: advertising %s (set peers.advertise)", fallback)
    return fallback


def _unspecified(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


@contextlib.asynccontextmanager
async def start_peer_node(
    config: Config, cache: BlockCache, counters: Counters, node_id: str
) -> AsyncIterator[PeerNode]:
    """Start serving and finding peers as ``config.peers`` says, and hosted cache mode as
    ``config.hosted_cache`` says; stop them all on exit."""
    peers, hc = config.peers, config.hosted_cache
    host, port = _split(peers.listen)
    source = CacheSource(cache)

    def served(count: int) -> None:
        counters.bytes_served_to_peers += count

    served_to = ServedTo()
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            RetrievalClient(
                connections_per_peer=peers.max_inflight_per_peer,
                local_host=None if _unspecified(host) else host,
            )
        )
        hosted: HostedCacheServer | None = None
        if hc.enabled:
            if peers.advertise:
                name = _split(peers.advertise)[0]
            else:
                name = host if not _unspecified(host) else socket.gethostname()
            hosted = await stack.enter_async_context(
                start_hosted_cache(config, cache, client, name)
            )

        async def serve(on_port: int) -> RetrievalServer:
            return await stack.enter_async_context(
                RetrievalServer(
                    source,
                    host,
                    on_port,
                    upload_limit=hc.upload_limit if hosted else peers.upload_limit,
                    on_served=served,
                    on_served_to=served_to,
                    allow_plaintext=peers.allow_plaintext,
                    sealed=hosted.sealed if hosted else None,
                    offers=hosted.intake if hosted else None,
                )
            )

        try:
            server = await serve(port)
        except PermissionError:
            if port >= 1024 or peers.listen != DEFAULT_LISTEN:
                raise errors.ConfigError(
                    "peers.listen", f"not allowed to bind {peers.listen}"
                ) from None
            # An unprivileged user on the embedded defaults (make run): still start, say why.
            log.warning(
                "cannot bind %s without CAP_NET_BIND_SERVICE; serving peers on port %d "
                "instead (Windows peers expect port 80: run as a service, or set peers.listen)",
                peers.listen,
                UNPRIVILEGED_PORT,
            )
            server = await serve(UNPRIVILEGED_PORT)
        except OSError as exc:
            raise errors.ConfigError(
                "peers.listen", f"cannot listen on {peers.listen}: {exc.strerror}"
            ) from exc
        if peers.advertise:
            advertise = peers.advertise
        elif not _unspecified(host):
            advertise = f"{host}:{server.port}" if ":" not in host else f"[{host}]:{server.port}"
        else:
            advertise = f"{_primary_address(ipaddress.ip_address(host).version)}:{server.port}"
        if peers.interfaces:
            interfaces: list[str] | None = list(peers.interfaces)
        elif not _unspecified(host):
            interfaces = [host]  # the interface of the listener (loopback included)
        else:
            interfaces = None  # every interface that has an address
        discovery = await stack.enter_async_context(
            Discovery(
                source,
                interface_addresses=interfaces,
                advertise=advertise,
                port=peers.discovery_port,
            )
        )
        swarm = Swarm(
            discovery,
            client,
            window=peers.discovery_window_ms / 1000.0,
            request_timeout=peers.request_timeout_ms / 1000.0,
            ban_seconds=peers.ban_seconds,
            failures_to_ban=peers.failures_to_ban,
            min_rate=float(peers.min_transfer_rate),
            own_addresses=[advertise],
            # A peer that never said busy is limited only by our own in-flight limits.
            window_limit=peers.max_inflight,
        )
        stack.push_async_callback(swarm.aclose)
        mdns = None
        if peers.zeroconf:
            adv_host, adv_port = _split(advertise)
            mdns = await stack.enter_async_context(
                Mdns(
                    node_id,
                    adv_port,
                    interfaces=interfaces,
                    addresses=[adv_host],
                    hosted_cache=hosted is not None,
                )
            )
        node = PeerNode(swarm, advertise, server, discovery, mdns, served_to, hosted=hosted)
        if hc.server:
            where = hosted_cache_address(config, _dns_sd(mdns))
            node.offerer = await stack.enter_async_context(
                make_offerer(
                    config, where, _split(advertise)[1], None if _unspecified(host) else host
                )
            )
            node.network = HostedCacheFirst(
                swarm, client, where, request_timeout=peers.request_timeout_ms / 1000.0
            )
        if peers.single_flight:
            node.flight = await stack.enter_async_context(
                FlightNet(
                    bytes.fromhex(node_id),
                    advertise,
                    interface_addresses=interfaces,
                    port=peers.claim_port,
                    ttl=peers.claim_ttl_ms / 1000.0,
                )
            )
        bound = f"[{host}]:{server.port}" if ":" in host else f"{host}:{server.port}"
        log.info(
            "serving peers on %s (advertised as %s), discovery on UDP port %d",
            bound, advertise, peers.discovery_port,
        )  # fmt: skip
        yield node


def _dns_sd(mdns: Mdns | None) -> Callable[[], str | None]:
    """The address of the first hosted cache announced with DNS-SD, when there is one."""

    def find() -> str | None:
        for peer in mdns.peers().values() if mdns is not None else ():
            if peer.hosted_cache and peer.addresses:
                return peer.addresses[0]
        return None

    return find
