"""MS-PCCRD discovery messages: WS-Discovery Probe / ProbeMatch over SOAP-over-UDP, sans-IO.

Built as the exact text real clients expect (PROTOCOLS.md 3.3, 3.4: iPXE's reply parser
searches literal tags); parsed with defusedxml after a size cap (see :mod:`.pccrd_xml`).
Only :class:`DecodeError` escapes a parser. The responder lives in :mod:`.pccrd_responder`.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape

from peerdistd.errors import DecodeError
from peerdistd.proto import pccrd_xml as x
from peerdistd.proto.pccrd_xml import MAX_MESSAGE_SIZE, MAX_SCOPES, check_xaddr
from peerdistd.proto.pccrr import ExtensibleBlob, parse_extensible_blob, serialize_extensible_blob

__all__ = [
    "APP_MAX_DELAY_MS",
    "GROUP_V4",
    "GROUP_V6",
    "MAX_MESSAGE_SIZE",
    "MAX_SCOPES",
    "PORT",
    "Probe",
    "ProbeMatch",
    "check_xaddr",
    "new_message_id",
    "parse_probe",
    "parse_probe_match",
    "split_for_probes",
]

PORT: Final = 3702  # 2.1
GROUP_V4: Final = "239.255.255.250"
GROUP_V6: Final = "ff02::c"
APP_MAX_DELAY_MS: Final = 65  # 3.2.4.1: random back-off before a ProbeMatch
# Probes we send stay inside one Ethernet frame, so no fragment can be lost on the way.
PROBE_BUDGET: Final = 1400

PROBE_TO: Final = "urn:schemas-xmlsoap-org:ws:2005:04:discovery"  # 2.2.2.1
PROBE_ACTION: Final = "http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe"
MATCH_TO: Final = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"  # 2.2.2.2
MATCH_ACTION: Final = "http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches"
MATCH_BY: Final = {
    1: "http://schemas.xmlsoap.org/ws/2005/04/discovery/strcmp0",
    2: "http://schemas.microsoft.com/p2p/2010/05/PeerDistV2MatchingRule",
}

_ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    f'<soap:Envelope xmlns:soap="{x.SOAP}" xmlns:wsa="{x.WSA}" xmlns:wsd="{x.WSD}"'
    f' xmlns:PeerDist="{x.PEERDIST}"><soap:Header>'
)


def new_message_id() -> str:
    """A fresh ``urn:uuid:`` MessageID (WS-Addressing)."""
    return uuid.uuid4().urn


@dataclass(frozen=True, slots=True)
class Probe:
    """A PeerDist Probe (2.2.2.1): version 1 lists hex scopes, version 2 one base64 scope."""

    message_id: str
    segment_ids: tuple[bytes, ...]
    version: int = 1

    def to_bytes(self) -> bytes:
        ids = self.segment_ids
        scopes = x.encode_v1_scopes(ids) if self.version == 1 else x.encode_v2_scope(ids)
        # Byte for byte the single line iPXE sends (3.3, pccrd.c); V2 as in [MS-PCCRD] 4.2.
        return (
            f"{_ENVELOPE}<wsa:To>{PROBE_TO}</wsa:To><wsa:Action>{PROBE_ACTION}</wsa:Action>"
            f"<wsa:MessageID>{escape(self.message_id)}</wsa:MessageID></soap:Header>"
            f"<soap:Body><wsd:Probe><wsd:Types>PeerDist:{x.DATA_TYPE[self.version]}</wsd:Types>"
            f'<wsd:Scopes MatchBy="{MATCH_BY[self.version]}">{scopes}</wsd:Scopes>'
            "</wsd:Probe></soap:Body></soap:Envelope>"
        ).encode()


@dataclass(frozen=True, slots=True)
class ProbeMatch:
    """A PeerDist ProbeMatch (2.2.2.2) answering the Probe whose MessageID is ``relates_to``.

    ``block_counts``: V1 the matched ids in order; V2 every requested id, 0 if not held.
    """

    message_id: str
    relates_to: str
    xaddrs: tuple[str, ...]
    block_counts: tuple[tuple[bytes, int], ...]
    version: int = 1
    endpoint: str = "urn:uuid:00000000-0000-0000-0000-000000000000"
    instance_id: int = 1
    message_number: int = 1

    @property
    def counts(self) -> dict[bytes, int]:
        """Held segments only, as ``{segment_id: block_count}``."""
        return {sid: n for sid, n in self.block_counts if n > 0}

    def to_bytes(self) -> bytes:
        counts = [n for _, n in self.block_counts]
        if self.version == 1:
            scopes = x.encode_v1_scopes([sid for sid, _ in self.block_counts])
            data = f"<PeerDist:BlockCount>{x.encode_block_counts(counts)}</PeerDist:BlockCount>"
        else:
            scopes = x.encode_v2_bits(counts)
            # We keep no segment ages; an empty blob v1 says so ([MS-PCCRR] 2.2.6.1).
            ages = base64.b64encode(serialize_extensible_blob(ExtensibleBlob())).decode()
            data = f"<PeerDist:SegmentAges>{ages}</PeerDist:SegmentAges>"
        # 3.4: iPXE finds `<wsd:Scopes>`, `<wsd:XAddrs>`, `<PeerDist:BlockCount>` literally,
        # so these are written exactly so, with no attribute on Scopes.
        return (
            f"{_ENVELOPE}<wsa:To>{MATCH_TO}</wsa:To><wsa:Action>{MATCH_ACTION}</wsa:Action>"
            f"<wsa:MessageID>{escape(self.message_id)}</wsa:MessageID>"
            f"<wsa:RelatesTo>{escape(self.relates_to)}</wsa:RelatesTo>"
            f'<wsd:AppSequence InstanceId="{self.instance_id}"'
            f' MessageNumber="{self.message_number}"/></soap:Header><soap:Body>'
            "<wsd:ProbeMatches><wsd:ProbeMatch><wsa:EndpointReference>"
            f"<wsa:Address>{escape(self.endpoint)}</wsa:Address></wsa:EndpointReference>"
            f"<wsd:Types>PeerDist:{x.DATA_TYPE[self.version]}</wsd:Types>"
            f"<wsd:Scopes>{scopes}</wsd:Scopes>"
            f"<wsd:XAddrs>{escape(' '.join(self.xaddrs))}</wsd:XAddrs>"
            f"<wsd:MetadataVersion>{self.version}</wsd:MetadataVersion>"
            f"<PeerDist:PeerDistData>{data}</PeerDist:PeerDistData>"
            "</wsd:ProbeMatch></wsd:ProbeMatches></soap:Body></soap:Envelope>"
        ).encode()


def parse_probe(data: bytes) -> Probe:
    """Parse a PeerDist Probe, V1 (hex scopes) or V2 (base64 scope)."""
    envelope = x.Envelope.parse(data, PROBE_ACTION)
    probe = x.child(envelope.body, x.WSD, "Probe")
    version = x.data_version(probe)
    scopes = x.child(probe, x.WSD, "Scopes")
    match_by = scopes.get("MatchBy")
    # WS-Discovery's default rule is RFC 3986 prefix matching; PeerDist always names its own.
    if match_by is not None and match_by.strip() != MATCH_BY[version]:
        raise DecodeError(f"Scopes MatchBy {match_by[:80]!r} is not PeerDist V{version}'s")
    value = x.text(scopes)
    ids = x.decode_v1_scopes(value) if version == 1 else x.decode_v2_scope(value)
    return Probe(envelope.message_id, ids, version)


def parse_probe_match(
    data: bytes, requested: Sequence[bytes] | Mapping[str, Sequence[bytes]] = ()
) -> ProbeMatch:
    """Parse a ProbeMatch (ours, Windows', or anything iPXE would accept).

    A V2 answer only says which of the requested ids it has, so ``requested`` must be the
    Probe's ids in order, or a table of them by the Probe's MessageID.
    """
    envelope = x.Envelope.parse(data, MATCH_ACTION)
    relates_to = x.uri(envelope.header.find(f"{{{x.WSA}}}RelatesTo"), "RelatesTo")
    if isinstance(requested, Mapping):
        requested = requested.get(relates_to, ())
    instance_id, number = x.app_sequence(envelope.header.find(f"{{{x.WSD}}}AppSequence"))
    matches = x.child(envelope.body, x.WSD, "ProbeMatches").findall(f"{{{x.WSD}}}ProbeMatch")
    if not matches:
        raise DecodeError("ProbeMatches holds no ProbeMatch")
    counts: list[tuple[bytes, int]] = []
    xaddrs: list[str] = []
    version, endpoint = 1, ""
    for match in matches:  # WS-Discovery allows several in one message; they are merged
        version = x.data_version(match)
        address = match.find(f"{{{x.WSA}}}EndpointReference/{{{x.WSA}}}Address")
        endpoint = x.text(address) if address is not None else endpoint
        xaddrs.extend(x.decode_xaddrs(x.text(x.child(match, x.WSD, "XAddrs"))))
        scopes = x.text(x.child(match, x.WSD, "Scopes"))
        data_el = x.child(match, x.PEERDIST, "PeerDistData")
        if version == 1:
            block_count = x.text(x.child(data_el, x.PEERDIST, "BlockCount"))
            counts.extend(x.decode_block_counts(scopes, block_count))
        else:
            counts.extend(x.decode_v2_bits(scopes, requested))
            ages = x.text(x.child(data_el, x.PEERDIST, "SegmentAges"))
            parse_extensible_blob(x.b64(ages))
    xaddr_set = tuple(dict.fromkeys(xaddrs))
    return ProbeMatch(
        envelope.message_id, relates_to, xaddr_set, tuple(counts), version, endpoint,
        instance_id, number,
    )  # fmt: skip


def split_for_probes(segment_ids: Sequence[bytes], version: int = 1) -> list[tuple[bytes, ...]]:
    """Group ids into as few probes as fit PROBE_BUDGET bytes (V2: one id size per probe)."""
    overhead = len(Probe(new_message_id(), (), version).to_bytes()) + 8
    sizes = sorted({len(s) for s in segment_ids}) if version == 2 else [0]
    groups: list[tuple[bytes, ...]] = []
    for size in sizes:
        current: list[bytes] = []
        for sid in dict.fromkeys(segment_ids):
            if version == 2 and len(sid) != size:
                continue
            if current and overhead + _scope_cost([*current, sid], version) > PROBE_BUDGET:
                groups.append(tuple(current))
                current = []
            current.append(sid)
            if len(current) == MAX_SCOPES:
                groups.append(tuple(current))
                current = []
        if current:
            groups.append(tuple(current))
    return groups


def _scope_cost(ids: list[bytes], version: int) -> int:
    if version == 1:
        return sum(2 * len(s) + 1 for s in ids)
    return 4 * -(-(3 + sum(len(s) for s in ids)) // 3)  # base64 of head + ids
