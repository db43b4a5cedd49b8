"""MS-PCCRTP headers (PROTOCOLS.md section 5): exact texts, parsing, the origin's decision."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrtp import (
    Answer,
    Element,
    PeerDistExParams,
    PeerDistParams,
    ProtocolVersion,
    Reply,
    ReplyKind,
    accepts_peerdist,
    decide,
    fold_fields,
    missing_data_headers,
    parse_answer,
    parse_list,
    parse_peerdist,
    parse_peerdist_ex,
    request_headers,
)

# What iPXE sends (PROTOCOLS.md 5, seen with the real client): the first GET, then per block.
IPXE_GET = {
    "Accept-Encoding": "peerdist",
    "X-P2P-PeerDist": "Version=1.1",
    "X-P2P-PeerDistEx": "MinContentInformation=1.0, MaxContentInformation=2.0",
}
IPXE_BLOCK = {"Range": "bytes=0-65535", "X-P2P-PeerDist": "Version=1.1, MissingDataRequest=true"}
WIN7_GET = {"Accept-Encoding": "gzip, deflate, peerdist", "X-P2P-PeerDist": "Version=1.0"}
WIN8_GET = {**IPXE_GET, "Accept-Encoding": "gzip, deflate, peerdist"}


def test_client_request_headers_are_the_exact_texts() -> None:
    assert request_headers() == IPXE_GET
    assert request_headers(ProtocolVersion.V1_1, 1) == {
        **IPXE_GET,
        "X-P2P-PeerDistEx": "MinContentInformation=1.0, MaxContentInformation=1.0",
    }
    # A 1.0 client (Windows 7) sends no PeerDistEx.
    assert request_headers(ProtocolVersion.V1_0) == {
        "Accept-Encoding": "peerdist",
        "X-P2P-PeerDist": "Version=1.0",
    }
    assert missing_data_headers() == {
        "Accept-Encoding": "identity",
        "X-P2P-PeerDist": "Version=1.1, MissingDataRequest=true",
    }


def test_parse_the_protocol_texts() -> None:
    assert parse_peerdist("Version=1.1") == PeerDistParams(version=(1, 1))
    assert parse_peerdist("Version=1.1, MissingDataRequest=true") == PeerDistParams(
        (1, 1), None, True
    )
    assert parse_peerdist("Version=1.0, ContentLength=2779316224") == PeerDistParams(
        (1, 0), 2779316224
    )
    assert parse_peerdist_ex(
        "MinContentInformation=1.0, MaxContentInformation=2.0"
    ) == PeerDistExParams((1, 0), (2, 0))
    assert parse_peerdist_ex(
        "MinContentInformation=1.0, MaxContentInformation=2.0, HashRequest=true"
    ) == PeerDistExParams((1, 0), (2, 0), hash_request=True)
    assert parse_peerdist_ex("MakeHashRequest=true") == PeerDistExParams(make_hash_request=True)


def test_names_and_booleans_are_case_insensitive_spaces_optional() -> None:
    assert parse_peerdist("version=1.1,missingdatarequest=TRUE") == PeerDistParams(
        (1, 1), None, True
    )
    assert parse_peerdist("  VERSION=1.1 ,\t, ContentLength=0 ") == PeerDistParams((1, 1), 0)
    assert parse_peerdist('Version="1.1"') == PeerDistParams((1, 1))


def test_unknown_parameters_are_kept_not_refused() -> None:
    assert parse_peerdist("Version=1.1, Future=x") == PeerDistParams(
        (1, 1), extensions=(("future", "x"),)
    )


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("Version", "not of the form"),
        ("Version=1", "not a version"),
        ("Version=a.b", "not a version"),
        ("Version=1.1, Version=1.0", "given twice"),
        ("MissingDataRequest=yes", "neither true nor false"),
        ("ContentLength=-1", "not a byte count"),
        ("ContentLength=99999999999999999999", "not a byte count"),
        ('ContentLength="\uff11\uff12"', "not allowed in a quoted"),  # not even a byte
        ('ContentLength="\u00b2"', "not a byte count"),  # obs-text, but no DIGIT
        ('Version="\u00b2.1"', "not a version"),  # nor is a superscript two
        ("Version=1.1;q=1", "not of the form"),
        ("Version=1.1 x", "expected ',' or ';'"),
        ('Version="1.1', "unterminated"),
        ("Version=1.1\x00", "expected ',' or ';'"),
    ],
)
def test_malformed_peerdist_values(text: str, complaint: str) -> None:
    with pytest.raises(DecodeError, match=complaint):
        parse_peerdist(text)


def test_list_syntax_with_parameters_and_quoted_strings() -> None:
    assert parse_list('gzip;q=0.5, Peerdist ; q="1", ,identity') == (
        Element("gzip", None, (("q", "0.5"),)),
        Element("peerdist", None, (("q", "1"),)),
        Element("identity"),
    )
    assert parse_list(r'x="a\"b"') == (Element("x", 'a"b'),)
    with pytest.raises(DecodeError) as err:
        parse_list("gzip, @")
    assert err.value.offset == 6


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("peerdist", True),
        ("PeerDist", True),
        ("gzip, deflate, peerdist", True),
        ("peerdist;q=0.1", True),
        ("peerdist;q=0", False),
        ("peerdist;q=0.000", False),
        ("gzip, *", False),  # a wildcard is no request for content information
        ("", False),
        ("peerdistx", False),
    ],
)
def test_accepts_peerdist(value: str, expected: bool) -> None:
    assert accepts_peerdist(value) is expected


def test_header_values_are_capped_before_parsing() -> None:
    with pytest.raises(DecodeError, match="longer than"):
        parse_list("a," * 5000)


V1_1 = ProtocolVersion.V1_1
V1_0 = ProtocolVersion.V1_0
PEERDIST = ReplyKind.PEERDIST


@pytest.mark.parametrize(
    ("method", "headers", "kind", "content_version", "version"),
    [
        ("GET", IPXE_GET, ReplyKind.PEERDIST, 2, V1_1),
        ("GET", WIN8_GET, ReplyKind.PEERDIST, 2, V1_1),
        ("GET", WIN7_GET, ReplyKind.PEERDIST, 1, V1_0),
        # Without PeerDistEx the answer is V1 ([MS-PCCRTP] 3.2).
        ("GET", {**IPXE_GET, "X-P2P-PeerDistEx": ""}, ReplyKind.PEERDIST, 1, V1_1),
        ("GET", {k: v for k, v in IPXE_GET.items() if "Ex" not in k}, ReplyKind.PEERDIST, 1, V1_1),
        # A 1.0 client gets V1 even if it sends PeerDistEx.
        ("GET", {**WIN7_GET, "X-P2P-PeerDistEx": IPXE_GET["X-P2P-PeerDistEx"]}, PEERDIST, 1, V1_0),
        (
            "GET",
            {
                **IPXE_GET,
                "X-P2P-PeerDistEx": "MinContentInformation=2.0, MaxContentInformation=2.0",
            },
            ReplyKind.PEERDIST,
            2,
            V1_1,
        ),
        (
            "GET",
            {
                **IPXE_GET,
                "X-P2P-PeerDistEx": "MinContentInformation=3.0, MaxContentInformation=4.0",
            },
            ReplyKind.IDENTITY,
            None,
            None,
        ),
        ("GET", {**IPXE_GET, "X-P2P-PeerDist": "Version=1.2"}, ReplyKind.PEERDIST, 2, V1_1),
        ("GET", {**IPXE_GET, "X-P2P-PeerDist": "Version=2.0"}, ReplyKind.IDENTITY, None, None),
        ("GET", {"Accept-Encoding": "peerdist"}, ReplyKind.IDENTITY, None, None),
        ("HEAD", IPXE_GET, ReplyKind.IDENTITY, None, None),
        ("GET", {}, ReplyKind.IDENTITY, None, None),
        ("GET", {"Accept-Encoding": "gzip"}, ReplyKind.IDENTITY, None, None),
        ("GET", IPXE_BLOCK, ReplyKind.MISSING_DATA, None, V1_1),
        # [MS-PCCRTP] 3.1: MissingDataRequest MUST NOT come with peerdist; the bytes are still due.
        ("GET", {**IPXE_BLOCK, "Accept-Encoding": "peerdist"}, ReplyKind.MISSING_DATA, None, V1_1),
        ("GET", {**IPXE_GET, "X-P2P-PeerDist": "Version=1.1,,=x"}, ReplyKind.IDENTITY, None, None),
    ],
)
def test_decide(
    method: str,
    headers: dict[str, str],
    kind: ReplyKind,
    content_version: int | None,
    version: ProtocolVersion | None,
) -> None:
    reply = decide(method, headers)
    assert reply.kind is kind
    assert reply.content_version == content_version
    if reply.kind is not ReplyKind.IDENTITY:
        assert reply.version is version


def test_decide_respects_what_the_origin_offers() -> None:
    assert decide("GET", IPXE_GET, offered=(1,)).content_version == 1
    assert decide("GET", WIN7_GET, offered=(2,)).kind is ReplyKind.IDENTITY


def test_decide_folds_header_names_and_repeated_fields() -> None:
    fields = CIMultiDict(IPXE_GET)
    fields["Accept-Encoding"] = "gzip"
    fields.add("ACCEPT-ENCODING", "peerdist")  # a second field line, as a multidict keeps it
    assert fold_fields(fields)["accept-encoding"] == "gzip, peerdist"
    assert decide("GET", fields).kind is ReplyKind.PEERDIST


def test_response_headers() -> None:
    reply = decide("GET", IPXE_GET)
    assert reply.headers(123456) == {
        "Vary": "Accept-Encoding",
        "Content-Encoding": "peerdist",
        "X-P2P-PeerDist": "Version=1.1, ContentLength=123456",
    }
    # Windows answers 1.1 only to 1.1 clients.
    assert decide("GET", WIN7_GET).headers(5)["X-P2P-PeerDist"] == "Version=1.0, ContentLength=5"
    pending = reply.identity_instead("still hashing", make_hash_request=True)
    assert pending == Reply(ReplyKind.IDENTITY, "still hashing", None, V1_1, True)
    assert pending.headers(5) == {
        "Vary": "Accept-Encoding",
        "X-P2P-PeerDist": "Version=1.1",
        "X-P2P-PeerDistEx": "MakeHashRequest=true",
    }
    assert decide("GET", {}).headers(5) == {"Vary": "Accept-Encoding"}


def test_parse_answer_round_trips_the_origin_headers() -> None:
    reply = decide("GET", IPXE_GET)
    assert parse_answer(reply.headers(99)) == Answer(True, (1, 1), 99, False)
    pending = reply.identity_instead("hashing", make_hash_request=True)
    assert parse_answer(pending.headers(99)) == Answer(False, (1, 1), None, True)
    assert parse_answer({"content-encoding": "gzip"}) == Answer(False)
    with pytest.raises(DecodeError, match="mixed"):
        parse_answer({"Content-Encoding": "gzip, peerdist"})


# --- Hypothesis: only DecodeError escapes; what we format parses back --------------------------

HEADER_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.sampled_from(
            [
                "Version",
                "=",
                "1.1",
                ",",
                ";",
                " ",
                '"',
                "\\",
                "q",
                "peerdist",
                "MissingDataRequest",
                "true",
                "ContentLength",
                "99999999999999999999999",
                "MinContentInformation",
                "2.0",
                "\t",
                "\x7f",
                "é",
                "\u00b2",
                "\uff11",
            ]
        ),
        max_size=30,
    ).map("".join),
)


@given(HEADER_TEXT)
def test_only_decode_error_escapes_the_parsers(text: str) -> None:
    for parser in (parse_list, parse_peerdist, parse_peerdist_ex, accepts_peerdist):
        with contextlib.suppress(DecodeError):
            parser(text)


@given(HEADER_TEXT, HEADER_TEXT, HEADER_TEXT, st.sampled_from(["GET", "HEAD", "POST"]))
def test_decide_never_raises(accept: str, peerdist: str, ex: str, method: str) -> None:
    headers = {"Accept-Encoding": accept, "X-P2P-PeerDist": peerdist, "X-P2P-PeerDistEx": ex}
    reply = decide(method, headers)
    assert reply.kind in ReplyKind
    assert reply.kind is not ReplyKind.PEERDIST or reply.content_version in (1, 2)
    try:
        parse_answer(reply.headers(10))
    except DecodeError:  # pragma: no cover - our own headers always parse
        raise AssertionError(reply) from None


@given(
    st.sampled_from(list(ProtocolVersion)),
    st.integers(0, (1 << 64) - 1),
    st.booleans(),
)
def test_formatted_peerdist_parses_back(
    version: ProtocolVersion, length: int, missing: bool
) -> None:
    text = f"Version={version.text}, ContentLength={length}"
    text += ", MissingDataRequest=true" if missing else ""
    assert parse_peerdist(text) == PeerDistParams(version.value, length, missing)
