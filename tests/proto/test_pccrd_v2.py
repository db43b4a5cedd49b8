"""PCCRD V2 (base64 scopes) and V1 probes carrying V2 segment ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrd import Probe, ProbeMatch, parse_probe, parse_probe_match
from peerdistd.proto.pccrd_responder import LocalInterface, Responder

# [MS-PCCRD] 4.2, "Version 2.0 Probe Message", as printed (indented, whitespace around values).
SPEC_V2_PROBE = b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"
  xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:wsd="http://schemas.xmlsoap.org/ws/2005/04/discovery"
  xmlns:PeerDist=
"http://schemas.microsoft.com/p2p/2007/09/PeerDistributionDiscovery">
  <soap:Header>
    <wsa:To>
      urn:schemas-xmlsoap-org:ws:2005:04:discovery
    </wsa:To>
    <wsa:Action>
      http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe
    </wsa:Action>
    <wsa:MessageID>
      urn:uuid:91528b47-b96d-4e30-981f-308c0586926f
    </wsa:MessageID>
  </soap:Header>
  <soap:Body>
    <wsd:Probe>
      <wsd:Types>
        PeerDist:PeerDistDataV2
      </wsd:Types>
      <wsd:Scopes
                MatchBy=
        "http://schemas.microsoft.com/p2p/2010/05/PeerDistV2MatchingRule">
ACACI74aAQAAAAAwHRoBAAAAAEEAQQBEAHkAZwBNAE0AMQAjvhoBAAAAADAdGgEAAAAAQQBBAEQAeQBnAE0ATQAxAA==
          </wsd:Scopes>
    </wsd:Probe>
  </soap:Body>
</soap:Envelope>
"""
SPEC_V2_HOHODK = bytes.fromhex("23BE1A0100000000301D1A0100000000410041004400790067004D004D003100")


def _spec_v2_match(requested: int) -> bytes:
    """[MS-PCCRD] 2.2.2.2's V2 ProbeMatch body (Scopes and SegmentAges as printed)."""
    assert requested == 40  # "/////////////w==" is 10 bytes: 40 two-bit entries, all set
    return b"""<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"
  xmlns:wsa="http://schemas.xmlsoap.org/ws/2004/08/addressing"
  xmlns:wsd="http://schemas.xmlsoap.org/ws/2005/04/discovery"
  xmlns:PeerDist="http://schemas.microsoft.com/p2p/2007/09/PeerDistributionDiscovery">
 <soap:Header>
  <wsa:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsa:To>
  <wsa:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsa:Action>
  <wsa:MessageID>urn:uuid:5c1b3e6a-6a43-4c38-9f5c-2d5b2f1f0a11</wsa:MessageID>
  <wsa:RelatesTo>urn:uuid:91528b47-b96d-4e30-981f-308c0586926f</wsa:RelatesTo>
  <wsd:AppSequence InstanceId="3" MessageNumber="9"/>
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
      PeerDist:PeerDistDataV2
   </wsd:Types>
   <wsd:Scopes>
 /////////////w==
   </wsd:Scopes>
   <wsd:XAddrs>
     157.59.141.183:54321
   </wsd:XAddrs>
     <wsd:MetadataVersion>
        2
     </wsd:MetadataVersion>
     <PeerDist:PeerDistData>
     <PeerDist:SegmentAges>
        AAEDAgBg6gACYOoA
     </PeerDist:SegmentAges>
    </PeerDist:PeerDistData>
   </wsd:ProbeMatch>
 </wsd:ProbeMatches>
 </soap:Body>
</soap:Envelope>
"""


def _responder() -> Responder:
    return Responder("10.0.0.2:80", [LocalInterface.of("10.0.0.2", 24)], instance_id=2)


def test_spec_v2_probe_parses() -> None:
    probe = parse_probe(SPEC_V2_PROBE)
    assert probe.version == 2
    assert probe.message_id == "urn:uuid:91528b47-b96d-4e30-981f-308c0586926f"
    assert probe.segment_ids == (SPEC_V2_HOHODK, SPEC_V2_HOHODK)


def test_spec_v2_match_parses() -> None:
    requested = [bytes([i]) * 32 for i in range(40)]
    match = parse_probe_match(_spec_v2_match(40), requested)
    assert match.version == 2
    assert match.relates_to == "urn:uuid:91528b47-b96d-4e30-981f-308c0586926f"
    assert match.xaddrs == ("157.59.141.183:54321",)
    assert match.counts == dict.fromkeys(requested, 1)


def test_v2_match_needs_the_probe_ids() -> None:
    with pytest.raises(DecodeError, match="for 0 ids"):
        parse_probe_match(_spec_v2_match(40))
    with pytest.raises(DecodeError, match="for 36 ids"):
        parse_probe_match(_spec_v2_match(40), [b"\1" * 32] * 36)


ids32 = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=255)


@given(ids32)
def test_v2_probe_round_trips(ids: list[bytes]) -> None:
    probe = Probe("urn:uuid:7", tuple(ids), 2)
    assert parse_probe(probe.to_bytes()) == probe


@given(ids32.flatmap(lambda ids: st.tuples(st.just(ids), st.sets(st.sampled_from(ids)))))
def test_v2_answer_flags_exactly_the_held_ids(case: tuple[list[bytes], set[bytes]]) -> None:
    ids, held = case
    planned = _responder().respond(
        Probe("urn:uuid:q", tuple(ids), 2).to_bytes(),
        ("10.0.0.7", 3702),
        lambda q: {sid: 1 for sid in q if sid in held},
    )
    if not held:
        assert planned is None
        return
    assert planned is not None
    match = parse_probe_match(planned.payload, ids)
    assert match.version == 2
    assert match.relates_to == "urn:uuid:q"
    assert match.counts == dict.fromkeys(held, 1)
    assert b"<PeerDist:SegmentAges>AAEDAA==</PeerDist:SegmentAges>" in planned.payload


def test_v2_bit_order_is_most_significant_first() -> None:
    ids = [bytes([i]) * 32 for i in range(5)]
    counts = tuple((sid, 1 if i in (1, 4) else 0) for i, sid in enumerate(ids))
    wire = ProbeMatch("urn:uuid:a", "urn:uuid:b", ("h:1",), counts, 2).to_bytes()
    # entries 1 and 4 set: 00 11 00 00 | 11 00 00 00 -> 0x30 0xC0
    assert b"<wsd:Scopes>MMA=</wsd:Scopes>" in wire
    assert parse_probe_match(wire, ids).counts == {ids[1]: 1, ids[4]: 1}


def test_v1_probe_with_v2_segment_ids_is_answered(vectors_dir: Path) -> None:
    info = json.loads((vectors_dir / "pccrc_v2_iis85.json").read_text())
    v2_ids = [bytes.fromhex(s["HoHoDk_segment_id_hex"]) for s in info["expected"]["segments"]]
    probe = Probe("urn:uuid:ipxe-v2", (v2_ids[1],))  # iPXE: V1 form, one id (pitfall 9)
    planned = _responder().respond(
        probe.to_bytes(), ("10.0.0.8", 1234), lambda q: {v2_ids[1]: 1} if v2_ids[1] in q else {}
    )
    assert planned is not None
    text = planned.payload.decode()
    assert f"<wsd:Scopes>{v2_ids[1].hex().upper()}</wsd:Scopes>" in text
    assert "<PeerDist:BlockCount>00000001</PeerDist:BlockCount>" in text
    assert parse_probe_match(planned.payload).counts == {v2_ids[1]: 1}


def test_v2_probe_rejects_mismatched_scope_lengths() -> None:
    good = Probe("urn:uuid:z", (b"\1" * 32, b"\2" * 32), 2).to_bytes()
    # "ACAC" starts 00 20 02; claim 3 ids instead.
    bad = good.replace(b">ACAC", b">ACAD", 1)
    with pytest.raises(DecodeError, match="V2 scope"):
        parse_probe(bad)
