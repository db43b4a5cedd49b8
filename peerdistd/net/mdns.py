"""DNS-SD over mDNS (zeroconf): announce this daemon as ``_peerdist._tcp`` and track the others.

TXT carries the node id, the PCCRR retrieval port, the protocol versions and the role
(peer or hosted cache). The table of live nodes is bounded and keyed by node id; goodbyes
and expiries remove entries. Withdrawn (goodbye sent) on exit.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from zeroconf import BadTypeInNameException, Error, InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from peerdistd.errors import ConfigError, DecodeError
from peerdistd.logs import RateLimitedLogger
from peerdistd.net.discovery_sockets import resolve_interfaces

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_peerdist._tcp.local."
MAX_PEERS: Final = 1024
ROLES: Final = ("peer", "hosted-cache")
_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")


@dataclass(frozen=True, slots=True)
class MdnsPeer:
    """Another daemon as its DNS-SD record describes it; ``last_seen`` is Unix time."""

    node_id: str
    addresses: tuple[str, ...]
    port: int
    versions: tuple[int, ...]
    hosted_cache: bool
    last_seen: float

    @property
    def address(self) -> str:
        """``host:port`` of its retrieval server."""
        host = self.addresses[0] if self.addresses else ""
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "last_seen": self.last_seen,
            "source": "zeroconf",
            "versions": list(self.versions),
            "hosted_cache": self.hosted_cache,
        }


def encode_txt(
    node_id: str, port: int, versions: Sequence[int], hosted_cache: bool
) -> dict[str, str]:
    """The TXT record of our service."""
    return {
        "txtvers": "1",
        "id": node_id,
        "port": str(port),
        "pv": ",".join(str(v) for v in versions),
        "role": ROLES[hosted_cache],
    }


def decode_txt(properties: Mapping[bytes, bytes | None]) -> tuple[str, int, tuple[int, ...], bool]:
    """(node id, retrieval port, versions, hosted cache) from a peer's TXT, or DecodeError."""
    fields = {_ascii(k): _ascii(v or b"") for k, v in properties.items()}
    node_id, port, role = fields.get("id", ""), fields.get("port", ""), fields.get("role", "")
    if not 0 < len(node_id) <= 63 or not set(node_id) <= _ID_CHARS:
        raise DecodeError(f"TXT id {node_id[:70]!r} is not a node id")
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise DecodeError(f"TXT port {port[:10]!r} is not a port")
    try:
        versions = tuple(sorted({int(v) for v in fields.get("pv", "1").split(",")}))
    except ValueError as exc:
        raise DecodeError(f"TXT pv {fields.get('pv', '')[:20]!r} is not a version list") from exc
    if role not in ROLES or not versions or not set(versions) <= {1, 2}:
        raise DecodeError(f"TXT role {role[:20]!r} / versions {versions[:4]} not understood")
    return node_id, int(port), versions, role == ROLES[1]


def _ascii(value: bytes) -> str:
    return value.decode("ascii", "replace")


def check_node_id(node_id: str) -> str:
    """A node id is a DNS label: 1..63 letters, digits or hyphens."""
    if not 0 < len(node_id) <= 63 or not set(node_id) <= _ID_CHARS:
        raise ConfigError("node_id", f"{node_id!r} is not a DNS label")
    return node_id


class Mdns:
    """Announce ourselves and browse the others; ``interfaces`` None means every interface."""

    def __init__(
        self,
        node_id: str,
        port: int,
        *,
        interfaces: Sequence[str] | None = None,
        addresses: Sequence[str] | None = None,
        versions: Sequence[int] = (1, 2),
        hosted_cache: bool = False,
        service_type: str = SERVICE_TYPE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = check_node_id(node_id)
        self.port = port
        self.interfaces = interfaces
        self.versions = tuple(versions)
        self.hosted_cache = hosted_cache
        self.service_type = service_type
        self._addresses = addresses
        self._clock = clock
        self._peers: dict[str, MdnsPeer] = {}
        self._names: dict[str, str] = {}  # service instance name -> node id
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._remote_log = RateLimitedLogger(log)
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._registration: asyncio.Future[Any] | None = None

    def peers(self) -> dict[str, MdnsPeer]:
        """The other live nodes by node id."""
        return dict(self._peers)

    def peers_json(self) -> list[dict[str, Any]]:
        """The table as the local API lists peers (``GET /v1/peers``)."""
        return [p.to_json() for p in self._peers.values()]

    async def wait_for(
        self, condition: Callable[[dict[str, MdnsPeer]], bool], timeout: float
    ) -> None:
        """Return once ``condition(peers())`` holds; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not condition(self.peers()):
                self._changed.clear()
                await self._changed.wait()

    async def __aenter__(self) -> Mdns:
        choice = list(self.interfaces) if self.interfaces is not None else InterfaceChoice.All
        version = _ip_version(self.interfaces)
        addresses = self._addresses or self.interfaces or _lan_addresses()
        try:
            self._zc = AsyncZeroconf(interfaces=choice, ip_version=version)
            self._info = AsyncServiceInfo(
                self.service_type,
                f"{self.node_id}.{self.service_type}",
                port=self.port,
                properties=encode_txt(self.node_id, self.port, self.versions, self.hosted_cache),
                server=f"{self.node_id}.local.",
                parsed_addresses=list(addresses),
            )
            # Probing for a unique name and announcing take ~1.5 s (RFC 6762 8.1, 8.3): let
            # it finish in the background so the daemon is ready at once.
            registration = asyncio.ensure_future(self._register(self._zc, self._info))
            self._registration = registration
            registration.add_done_callback(self._registered)
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, self.service_type, handlers=[self._on_change]
            )
        except (Error, OSError, ValueError) as exc:
            await self.aclose()
            raise ConfigError("peers.zeroconf", f"cannot announce on {choice}: {exc}") from exc
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @staticmethod
    async def _register(zc: AsyncZeroconf, info: AsyncServiceInfo) -> None:
        await (await zc.async_register_service(info))

    def _registered(self, registration: asyncio.Future[Any]) -> None:
        if not registration.cancelled() and (exc := registration.exception()) is not None:
            log.error("zeroconf could not announce this node: %s", exc)

    async def aclose(self) -> None:
        """Stop browsing, send goodbyes for our service, close the sockets."""
        if self._registration is not None:
            if not self._registration.done():
                # Still probing: nobody has heard of us yet, so there is nothing to withdraw.
                self._registration.cancel()
                self._info = None
            await asyncio.gather(self._registration, return_exceptions=True)
            self._registration = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            if self._info is not None:
                await (await self._zc.async_unregister_service(self._info))
            await self._zc.async_close()
            self._zc = self._info = None

    def _on_change(
        self, zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            node_id = self._names.pop(name, None)
            if node_id is not None and self._peers.pop(node_id, None) is not None:
                self._changed.set()
            return
        task = asyncio.get_running_loop().create_task(self._resolve(service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, service_type: str, name: str) -> None:
        assert self._zc is not None
        info = AsyncServiceInfo(service_type, name)
        try:
            if not await info.async_request(self._zc.zeroconf, 3000):
                return
            node_id, port, versions, hosted = decode_txt(info.properties)
        except (DecodeError, BadTypeInNameException) as exc:
            self._remote_log.warning(name, "ignoring mDNS service %s: %s", name, exc)
            return
        if node_id == self.node_id:
            return
        if node_id not in self._peers and len(self._peers) >= MAX_PEERS:
            self._remote_log.warning("full", "mDNS peer table full; ignoring %s", name)
            return
        addresses = tuple(info.parsed_scoped_addresses())
        self._names[name] = node_id
        self._peers[node_id] = MdnsPeer(node_id, addresses, port, versions, hosted, self._clock())
        self._changed.set()


def _ip_version(interfaces: Sequence[str] | None) -> IPVersion:
    if interfaces is None:
        return IPVersion.V4Only
    try:
        families = {ipaddress.ip_address(a.partition("%")[0]).version for a in interfaces}
    except ValueError as exc:
        raise ConfigError("peers.interfaces", f"{list(interfaces)} are not IP addresses") from exc
    if families == {6}:
        return IPVersion.V6Only
    return IPVersion.V4Only if families == {4} else IPVersion.All


def _lan_addresses() -> list[str]:
    found = [i.host for i in resolve_interfaces(None) if i.family == socket.AF_INET]
    return [a for a in found if not ipaddress.ip_address(a).is_loopback] or found
