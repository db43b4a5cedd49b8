"""PCCRD V1 against iPXE: its probe text parses and our answer passes its literal parser."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrd import Probe, ProbeMatch, parse_probe, parse_probe_match
from peerdistd.proto.pccrd_responder import LocalInterface, Responder


@pytest.fixture
def ipxe_probe(vectors_dir: Path) -> bytes:
    wire = json.loads((vectors_dir / "derived_wire_examples.json").read_text())
    return str(wire["pccrd_v1_probe_as_ipxe_sends_it"]).encode()


@pytest.fixture
def v1_scope(vectors_dir: Path) -> str:
    info = json.loads((vectors_dir / "pccrc_v1_iis85.json").read_text())
    return str(info["expected"]["segments"][0]["HoHoDk_pccrd_scope_string"])


# --- A re-implementation of iPXE's peerdist_discovery_reply() (src/net/pccrd.c) --------------
# It works on the raw bytes, like the C code: literal tag search, whitespace runs turned into
# NULs in place, 8 characters of BlockCount per scope, "00000000" dropped.

_C_SPACE = b" \t\n\v\f\r"


def _ipxe_values(buf: bytearray, name: bytes) -> list[bytes] | None:
    open_at = buf.find(b"<" + name + b">")
    if open_at < 0:
        return None
    start = open_at + len(name) + 2
    close = buf.find(b"</" + name + b">", start)
    if close < 0:
        return None
    out = start
    for i in range(start, close):
        c = buf[i]
        if c in _C_SPACE:
            if out > start and buf[out - 1] != 0:
                buf[out] = 0
                out += 1
        else:
            buf[out] = c
            out += 1
    buf[out : out + 2] = b"\0\0"
    values = []
    pos = start
    while buf[pos] != 0:
        end = buf.index(0, pos)
        values.append(bytes(buf[pos:end]))
        pos = end + 1
    return values


def ipxe_discovery_reply(data: bytes) -> tuple[list[str], list[str]]:
    """(segment id strings, peer locations) as iPXE extracts them, or ValueError."""
    buf = bytearray(data) + b"\0" * 4
    scopes = _ipxe_values(buf, b"wsd:Scopes")
    xaddrs = _ipxe_values(buf, b"wsd:XAddrs")
    counts = _ipxe_values(buf, b"PeerDist:BlockCount")
    if scopes is None or xaddrs is None or counts is None:
        raise ValueError("ENOENT: a tag is missing")
    first = counts[0] if counts else b""
    limit = len(first) // 8
    ids = []
    for i, scope in enumerate(scopes):
        if i >= limit:
            raise ValueError("EPROTO: too many segment IDs")
        if first[8 * i : 8 * i + 8] != b"00000000":
            ids.append(scope.decode())
    return ids, [x.decode() for x in xaddrs]


def ipxe_finds_peers(reply: bytes, our_id_upper: str) -> list[str]:
    """The peers iPXE's peerdisc.c adds for its segment: strcmp of the id strings."""
    ids, locations = ipxe_discovery_reply(reply)
    return locations if any(i == our_id_upper for i in ids) else []


# --- tests -------------------------------------------------------------------------------------


def test_ipxe_probe_parses(ipxe_probe: bytes, v1_scope: str) -> None:
    probe = parse_probe(ipxe_probe)
    assert probe.version == 1
    assert probe.message_id == "urn:uuid:00000000-0000-0000-0000-000000000000"
    assert probe.segment_ids == (bytes.fromhex(v1_scope),)


def test_our_v1_probe_is_ipxe_text_byte_for_byte(ipxe_probe: bytes, v1_scope: str) -> None:
    probe = Probe("urn:uuid:00000000-0000-0000-0000-000000000000", (bytes.fromhex(v1_scope),))
    assert probe.to_bytes() == ipxe_probe


def test_answer_to_ipxe_is_accepted_by_ipxe_parser(ipxe_probe: bytes, v1_scope: str) -> None:
    sid = bytes.fromhex(v1_scope)
    responder = Responder(
        "127.0.0.2:8080",
        [LocalInterface.of("127.0.0.2", 8)],
        instance_id=7,
        rng=random.Random(1),
    )
    planned = responder.respond(ipxe_probe, ("127.0.0.1", 40000), lambda ids: {sid: 2})
    assert planned is not None
    assert planned.destination == ("127.0.0.1", 40000)
    assert planned.via == "127.0.0.2"
    assert 1 <= planned.delay_ms <= 65
    assert ipxe_finds_peers(planned.payload, v1_scope) == ["127.0.0.2:8080"]
    text = planned.payload.decode()
    # 3.4: the exact forms iPXE and Windows read.
    assert f"<wsd:Scopes>{v1_scope}</wsd:Scopes>" in text
    assert "<wsd:XAddrs>127.0.0.2:8080</wsd:XAddrs>" in text
    assert "<PeerDist:BlockCount>00000002</PeerDist:BlockCount>" in text
    assert (
        "<wsa:RelatesTo>urn:uuid:00000000-0000-0000-0000-000000000000</wsa:RelatesTo>"
        '<wsd:AppSequence InstanceId="7" MessageNumber="1"/>'
    ) in text
    assert "<wsa:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>" in (
        text
    )
    assert "<wsa:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches" in text
    assert "\n" not in text
    match = parse_probe_match(planned.payload)
    assert match.relates_to == "urn:uuid:00000000-0000-0000-0000-000000000000"
    assert match.xaddrs == ("127.0.0.2:8080",)
    assert match.counts == {sid: 2}
    assert match.endpoint == responder.endpoint
    assert (match.instance_id, match.message_number) == (7, 1)


def test_several_scopes_counts_in_order_and_zero_dropped_by_both_parsers() -> None:
    ids = [bytes([i]) * 32 for i in (0xA1, 0xB2, 0xC3)]
    match = ProbeMatch(
        "urn:uuid:1",
        "urn:uuid:2",
        ("10.0.0.5:80", "10.0.0.6:3000"),
        ((ids[0], 0x1FF), (ids[1], 0), (ids[2], 0x2A)),
    )
    wire = match.to_bytes()
    assert b"<PeerDist:BlockCount>000001FF000000000000002A</PeerDist:BlockCount>" in wire
    got_ids, peers = ipxe_discovery_reply(wire)
    assert got_ids == [ids[0].hex().upper(), ids[2].hex().upper()]
    assert peers == ["10.0.0.5:80", "10.0.0.6:3000"]  # every XAddr is a peer
    assert parse_probe_match(wire).counts == {ids[0]: 0x1FF, ids[2]: 0x2A}


def test_multi_id_probe_answers_only_held_ids_in_probe_order() -> None:
    ids = tuple(bytes([i]) * 32 for i in range(1, 6))
    probe = Probe("urn:uuid:abc", ids)
    responder = Responder("192.168.1.9:80", [LocalInterface.of("192.168.1.9", 24)], instance_id=1)
    held = {ids[3]: 5, ids[1]: 1}
    planned = responder.respond(
        probe.to_bytes(),
        ("192.168.1.20", 5000),
        lambda q: {k: v for k, v in held.items() if k in q},
    )
    assert planned is not None
    assert planned.segment_ids == (ids[1], ids[3])
    for sid in (ids[1], ids[3]):
        assert ipxe_finds_peers(planned.payload, sid.hex().upper()) == ["192.168.1.9:80"]
    assert ipxe_finds_peers(planned.payload, ids[0].hex().upper()) == []
    assert parse_probe_match(planned.payload).block_counts == ((ids[1], 1), (ids[3], 5))


# Windows writes the documented layout, indented (MS-PCCRD 2.2.2.2 and 4.3).
WINDOWS_MATCH = b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"
  xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:wsd="http://schemas.xmlsoap.org/ws/2005/04/discovery"
  xmlns:PeerDist="http://schemas.microsoft.com/p2p/2007/09/PeerDistributionDiscovery">
  <soap:Header>
    <wsa:To>
      http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous
    </wsa:To>
    <wsa:Action>
      http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches
    </wsa:Action>
    <wsa:MessageID>
      urn:uuid:1ec2f9d6-2e8c-4d6e-9b1f-6c0e7d9d3b3a
    </wsa:MessageID>
    <wsa:RelatesTo>
      urn:uuid:91528b47-b96d-4e30-981f-308c0586926f
    </wsa:RelatesTo>
    <wsd:AppSequence InstanceId="1234" MessageNumber="17"/>
  </soap:Header>
  <soap:Body>
    <wsd:ProbeMatches>
      <wsd:ProbeMatch>
        <wsa:EndpointReference>
          <wsa:Address>
            urn:uuid:87A89944-0230-43a5-AC4E-FAB1386C8E2C
          </wsa:Address>
        </wsa:EndpointReference>
        <wsd:Types>
          PeerDist:PeerDistData
        </wsd:Types>
        <wsd:Scopes>
0200000000000000000000000000000000000000000000000000000000000000
        </wsd:Scopes>
        <wsd:XAddrs>
          157.59.141.183:54321
        </wsd:XAddrs>
        <wsd:MetadataVersion>
          1
        </wsd:MetadataVersion>
        <PeerDist:PeerDistData>
          <PeerDist:BlockCount>
            0000002A
          </PeerDist:BlockCount>
        </PeerDist:PeerDistData>
      </wsd:ProbeMatch>
    </wsd:ProbeMatches>
  </soap:Body>
</soap:Envelope>
"""


def test_windows_layout_parses_for_us_and_ipxe() -> None:
    sid = bytes.fromhex("02" + "00" * 31)
    match = parse_probe_match(WINDOWS_MATCH)
    assert match.relates_to == "urn:uuid:91528b47-b96d-4e30-981f-308c0586926f"
    assert match.xaddrs == ("157.59.141.183:54321",)
    assert match.counts == {sid: 42}
    assert (match.instance_id, match.message_number) == (1234, 17)
    assert match.endpoint == "urn:uuid:87A89944-0230-43a5-AC4E-FAB1386C8E2C"
    assert ipxe_finds_peers(WINDOWS_MATCH, sid.hex().upper()) == ["157.59.141.183:54321"]


def test_more_scopes_than_counts_is_rejected_like_ipxe() -> None:
    # The spec's prose example lists two scopes with one count; iPXE fails it with EPROTO.
    two = WINDOWS_MATCH.replace(b"0200000000", b"0200000000" + b"00" * 27 + b" 0300000000", 1)
    with pytest.raises(ValueError, match="EPROTO"):
        ipxe_discovery_reply(two)
    with pytest.raises(DecodeError, match="8 hex digits per scope"):
        parse_probe_match(two)


def test_lower_case_probe_ids_are_answered_in_upper_case() -> None:
    sid = bytes.fromhex("ab" * 32)
    text = Probe("urn:uuid:x", (sid,)).to_bytes().replace(b"AB" * 32, b"ab" * 32)
    assert parse_probe(text).segment_ids == (sid,)
    responder = Responder("10.1.1.1:80", [LocalInterface.of("10.1.1.1", 16)], instance_id=1)
    planned = responder.respond(text, ("10.1.2.3", 9), lambda ids: {sid: 1})
    assert planned is not None
    assert ipxe_finds_peers(planned.payload, "AB" * 32) == ["10.1.1.1:80"]
