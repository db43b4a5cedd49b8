"""Composition of hosted cache mode (MS-PCHC): the server role's parts, and the client role's.

Part of the composition root (beside ``peering.py``): adapts the block cache and the store of
unverified blocks to the ``typing.Protocol`` seams of ``peerdistd.net``, makes the lab
certificate, and wraps the engine's block store so completed segments get offered.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peerdistd import errors
from peerdistd.config import Config
from peerdistd.config_checks import split_server
from peerdistd.net.hosted_cache import OfferIntake, OfferServer
from peerdistd.net.hosted_cache_client import HostedCacheAddress, Offerer
from peerdistd.net.hosted_cache_pull import Puller
from peerdistd.net.retrieval_client import RetrievalClient
from peerdistd.proto.pccrc import HashAlgorithm, Segment
from peerdistd.store.blockcache import BlockCache, SegmentRecord
from peerdistd.store.opaque import OpaqueBlock, OpaqueStore

log = logging.getLogger(__name__)

CERT_FILE = "hosted-cache-cert.pem"
KEY_FILE = "hosted-cache-key.pem"
CERT_DAYS = 825  # the longest validity clients accept for a TLS server certificate


class CacheSink:
    """The block cache as the hosted cache's store of verified blocks."""

    def __init__(self, cache: BlockCache) -> None:
        self.cache = cache

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        try:
            return self.cache.held_blocks(segment_id)
        except errors.PeerDistError:
            return []

    def accept_segment(self, segment: Segment, algorithm: HashAlgorithm) -> None:
        # A V1 SEGMENT_INFO lists every block hash (HoD is their hash): it proves the blocks,
        # so they are served to peers (docs/trust.md).
        full = algorithm.version == 1 and len(segment.block_hashes) == segment.block_count
        self.cache.add_segment(_record(segment, algorithm), segment.block_hashes if full else None)

    def put_block(self, segment_id: bytes, index: int, data: bytes, block_hash: bytes) -> None:
        # Staged: readable at once, made durable by commit() with the segment's other blocks.
        self.cache.put_blocks(segment_id, ((index, data, block_hash),), durable=False)

    def commit(self) -> None:
        self.cache.commit_staged()


class SealedSink:
    """The store of unverified blocks, for the puller (``keep``) and the server (``get``)."""

    def __init__(self, store: OpaqueStore) -> None:
        self.store = store

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return self.store.held_blocks(segment_id)

    def keep(
        self, segment_id: bytes, index: int, crypto: int, iv: bytes, block: bytes, offerer: str
    ) -> bool:
        return self.store.put(segment_id, index, OpaqueBlock(crypto, iv, block), offerer)

    def get(self, segment_id: bytes, index: int) -> OpaqueBlock | None:
        return self.store.get(segment_id, index)


def _record(segment: Segment, algorithm: HashAlgorithm) -> SegmentRecord:
    return SegmentRecord(
        segment_id=segment.segment_id,
        version=algorithm.version,
        algorithm=algorithm.value,
        hod=segment.hod,
        secret=segment.secret,
        length=segment.length,
        block_size=segment.block_size,
    )


@dataclass
class HostedCacheServer:
    """The running server role."""

    intake: OfferIntake
    sealed: SealedSink
    puller: Puller
    offers: OfferServer


def ensure_certificate(cert: Path, key: Path, names: Iterable[str]) -> None:
    """A self-signed certificate for ``names`` at ``cert``/``key`` unless both exist (labs)."""
    if cert.exists() and key.exists():
        return
    private = ec.generate_private_key(ec.SECP256R1())
    names = list(dict.fromkeys(names))
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(private, hashes.SHA256())
    )
    key_bytes = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_bytes)
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    log.warning(
        "made a self-signed hosted cache certificate %s for %s: Windows clients only offer to "
        "a hosted cache whose certificate they trust (docs/hosted-cache.md)",
        cert,
        ", ".join(names),
    )


def _server_ssl(config: Config, advertise_host: str) -> ssl.SSLContext:
    hc, state = config.hosted_cache, config.paths.state_dir
    cert = Path(hc.certificate) if hc.certificate else state / CERT_FILE
    key = Path(hc.private_key) if hc.private_key else state / KEY_FILE
    if not hc.certificate:
        ensure_certificate(cert, key, [socket.gethostname(), advertise_host])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise errors.ConfigError("hosted_cache.certificate", f"cannot load {cert}: {exc}") from exc
    return context


@contextlib.asynccontextmanager
async def start_hosted_cache(
    config: Config, cache: BlockCache, client: RetrievalClient, advertise_host: str
) -> AsyncIterator[HostedCacheServer]:
    """The server role: the store of unverified blocks, the puller, the v1 HTTPS listener."""
    hc = config.hosted_cache
    opaque = OpaqueStore(
        config.paths.cache_dir / "offered",
        hc.unverified_limit_bytes,
        hc.unverified_per_offerer_bytes,
    ).open()
    sealed = SealedSink(opaque)
    context = _server_ssl(config, advertise_host)
    host, _, port = hc.listen.rpartition(":")
    async with contextlib.AsyncExitStack() as stack:
        puller = await stack.enter_async_context(
            Puller(
                client,
                CacheSink(cache),
                sealed,
                slots=hc.pull_slots,
                offerer_rate=hc.offerer_rate,
                queue_limit=hc.pull_queue,
            )
        )
        intake = OfferIntake(puller)
        try:
            offers = await stack.enter_async_context(
                OfferServer(intake, host.strip("[]"), int(port), context)
            )
        except OSError as exc:
            raise errors.ConfigError(
                "hosted_cache.listen", f"cannot listen on {hc.listen}: {exc.strerror}"
            ) from exc
        log.info("hosted cache: v1.0 offers on %s (HTTPS), v2.0 on the PCCRR port", hc.listen)
        yield HostedCacheServer(intake, sealed, puller, offers)


def hosted_cache_address(
    config: Config, dns_sd: Callable[[], str | None] | None
) -> Callable[[], HostedCacheAddress | None]:
    """Where the configured hosted cache is, as a function (DNS-SD may find it later)."""
    hc = config.hosted_cache
    if hc.server == "dns-sd":

        def found() -> HostedCacheAddress | None:
            host = dns_sd() if dns_sd is not None else None
            return None if host is None else HostedCacheAddress(host, 443, hc.server_v2_port)

        return found
    host, port = split_server(hc.server, 443)
    fixed = HostedCacheAddress(host, port, hc.server_v2_port)
    return lambda: fixed


def offerer(
    config: Config,
    where: Callable[[], HostedCacheAddress | None],
    own_port: int,
    local_host: str | None,
) -> Offerer:
    hc = config.hosted_cache
    context = ssl.create_default_context(cafile=hc.ca_file or None)
    return Offerer(
        where,
        own_port,
        version=hc.offer_version,
        ssl_context=context,
        queue_limit=hc.offer_queue,
        local_host=local_host,
    )


def segment_offers(
    cache: BlockCache, offer: Callable[[Segment, HashAlgorithm], None]
) -> Callable[[bytes], None]:
    """The cache's ``on_segment_complete`` for a hosted cache client: offer the segment with
    the hashes the cache verified its blocks under (whichever run of the daemon stored them).
    Offering only queues: it never slows the write."""

    def completed(segment_id: bytes) -> None:
        record = cache.segment(segment_id)
        if record is None:
            return
        hashes = cache.block_hashes(segment_id)
        if len(hashes) < record.block_count:
            return  # dropped meanwhile (evicted or flushed)
        segment = Segment(
            index=0,
            offset=0,  # not kept by the cache; the hosted cache derives nothing from it
            length=record.length,
            block_size=record.block_size,
            hod=record.hod,
            secret=record.secret,
            segment_id=record.segment_id,
            block_hashes=tuple(hashes[i] for i in range(record.block_count)),  # V2: HoD
        )
        offer(segment, HashAlgorithm(record.algorithm))

    return completed
