"""Fuzzing the PCCRD parsers: only DecodeError escapes; XML bombs are refused."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrd import (
    MAX_MESSAGE_SIZE,
    Probe,
    ProbeMatch,
    parse_probe,
    parse_probe_match,
)
from peerdistd.proto.pccrd_responder import LocalInterface, Responder

IDS = tuple(bytes([i]) * 32 for i in range(3))
SAMPLES = [
    Probe("urn:uuid:1", IDS).to_bytes(),
    Probe("urn:uuid:2", IDS, 2).to_bytes(),
    ProbeMatch("urn:uuid:3", "urn:uuid:1", ("10.0.0.1:80",), ((IDS[0], 4), (IDS[2], 1))).to_bytes(),
    ProbeMatch(
        "urn:uuid:4", "urn:uuid:2", ("[fe80::1]:80",), tuple((s, 1) for s in IDS), 2
    ).to_bytes(),
]
FRAGMENTS = [
    "<",
    ">",
    "/>",
    "</",
    "&",
    "&amp;",
    "&#0;",
    "&#x110000;",
    "<![CDATA[",
    "]]>",
    "<!--",
    "-->",
    "<?xml",
    "?>",
    '"',
    "=",
    " ",
    "\n",
    "\x00",
    "é",
    "\udcff",
    "<wsd:Scopes>",
    "</wsd:Scopes>",
    "<wsd:Types>PeerDist:PeerDistData</wsd:Types>",
    "<wsd:Types>PeerDist:PeerDistDataV2</wsd:Types>",
    "<PeerDist:BlockCount>",
    "0000002A",
    "ZZZZZZZZ",
    "ACAC",
    "////",
    IDS[0].hex().upper(),
    "1.2.3.4:80",
    ":",
    "[",
    "]",
    "xmlns:wsd='http://schemas.xmlsoap.org/ws/2005/04/discovery'",
    "<!DOCTYPE",
    "<!ENTITY",
    "SYSTEM",
]


def _all_parsers(data: bytes) -> None:
    responder = Responder("10.0.0.2:80", [LocalInterface.of("10.0.0.2", 8)], instance_id=1)
    for parse in (
        parse_probe,
        parse_probe_match,
        lambda d: parse_probe_match(d, IDS),
        lambda d: responder.decide(d, ("10.0.0.9", 1), lambda ids: dict.fromkeys(ids, 1)),
    ):
        with contextlib.suppress(DecodeError):
            parse(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _all_parsers(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLES),
    st.lists(
        st.tuples(st.integers(0, 2000), st.integers(0, 40), st.binary(max_size=12)), max_size=6
    ),
)
def test_mutated_messages(sample: bytes, edits: list[tuple[int, int, bytes]]) -> None:
    data = bytearray(sample)
    for at, cut, insert in edits:
        at %= len(data) + 1
        data[at : at + cut] = insert
    _all_parsers(bytes(data))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SAMPLES), st.lists(st.sampled_from(FRAGMENTS), max_size=12), st.data())
def test_spliced_fragments(sample: bytes, fragments: list[str], data: st.DataObject) -> None:
    text = bytearray(sample)
    for fragment in fragments:
        at = data.draw(st.integers(0, len(text)))
        text[at:at] = fragment.encode("utf-8", "surrogatepass")
    _all_parsers(bytes(text))


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
def test_fragment_soup(fragments: list[str]) -> None:
    _all_parsers("".join(fragments).encode("utf-8", "surrogatepass"))


def _with_prolog(prolog: str, body_marker: str = "") -> bytes:
    probe = Probe("urn:uuid:1", (IDS[0],)).to_bytes().decode()
    head, _, rest = probe.partition("?>")
    if body_marker:
        rest = rest.replace("urn:uuid:1", body_marker, 1)
    return f"{head}?>{prolog}{rest}".encode()


BOMBS = {
    "billion_laughs": _with_prolog(
        '<!DOCTYPE soap:Envelope [<!ENTITY a "lol">'
        + "".join(
            f'<!ENTITY {c} "{("&" + p + ";") * 10}">'
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + "]>",
        "&i;",
    ),
    "quadratic_blowup": _with_prolog(
        f'<!DOCTYPE soap:Envelope [<!ENTITY x "{"A" * 5000}">]>', "&x;" * 1000
    ),
    "external_entity": _with_prolog(
        '<!DOCTYPE soap:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>', "&x;"
    ),
    "external_dtd": _with_prolog('<!DOCTYPE soap:Envelope SYSTEM "http://127.0.0.1:9/x.dtd">'),
    "parameter_entity": _with_prolog(
        '<!DOCTYPE soap:Envelope [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]>'
    ),
    "internal_dtd_only": _with_prolog("<!DOCTYPE soap:Envelope []>"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_xml_bombs_are_refused(name: str) -> None:
    bomb = BOMBS[name]
    assert len(bomb) < MAX_MESSAGE_SIZE
    with pytest.raises(DecodeError, match="forbidden XML construct: DTDForbidden"):
        parse_probe(bomb)
    with pytest.raises(DecodeError):
        parse_probe_match(bomb)


def test_oversized_is_refused_before_parsing() -> None:
    big = Probe("urn:uuid:1", IDS).to_bytes().replace(b"<soap:Body>", b" " * MAX_MESSAGE_SIZE)
    with pytest.raises(DecodeError, match="exceeds") as err:
        parse_probe(big)
    assert err.value.offset == MAX_MESSAGE_SIZE


def test_non_utf8_is_refused() -> None:
    with pytest.raises(DecodeError, match="not UTF-8") as err:
        parse_probe(b"<?xml version='1.0'?>\xff")
    assert err.value.offset == 21
