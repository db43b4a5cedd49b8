"""The strict sans-IO HTTP/1.1 codec of the PCCRR path: heads, chunked bodies, the head cache."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.net.http11 import (
    MAX_HEAD,
    ChunkedDecoder,
    HeadCache,
    RequestHead,
    ResponseHead,
    check_request_start,
    parse_request_head,
    parse_response_head,
    response_head,
)

MAGIC = b"/116B50EB-ECE2-41ac-8429-9F9E963361B7/"
IPXE = (
    b"POST " + MAGIC + b" HTTP/1.1\r\nUser-Agent: iPXE/1.21.1\r\nHost: 10.0.0.2:80\r\n"
    b"Connection: keep-alive\r\nContent-Length: 68"
)


def test_ipxe_request_head() -> None:
    assert parse_request_head(IPXE) == RequestHead(b"POST", MAGIC, 68, True, False, False)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        # No framing field: a request body of length 0 (RFC 9112 6.3 (6)).
        (b"POST / HTTP/1.1\r\nHost: a", RequestHead(b"POST", b"/", 0, True, False, False)),
        (
            b"POST /a?x=1 HTTP/1.0\r\nContent-Length: 5",
            RequestHead(b"POST", b"/a", 5, False, False, True),
        ),
        (
            b"POST /a HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 5",
            RequestHead(b"POST", b"/a", 5, True, False, True),
        ),
        (
            b"POST /a HTTP/1.1\r\nconnection: foo, close\r\ncontent-length:5\r\nhost:a",
            RequestHead(b"POST", b"/a", 5, False, False, False),
        ),
        (
            b"POST /a HTTP/1.1\r\nTransfer-Encoding: Chunked\r\nExpect: 100-Continue\r\n"
            b"Host: [::1]:80",
            RequestHead(b"POST", b"/a", None, True, True, False),
        ),
        (
            b"POST http://10.0.0.2" + MAGIC + b" HTTP/1.1\r\nContent-Length: 1\r\nHost: 10.0.0.2",
            RequestHead(b"POST", MAGIC, 1, True, False, False),
        ),
        (
            b"POST /116B50EB%2DECE2-41ac-8429-9F9E963361B7/ HTTP/1.1\r\nHost: x",
            RequestHead(b"POST", MAGIC, 0, True, False, False),
        ),
        (  # a repeated Content-Length with the same value is one value (RFC 9110 8.6)
            b"POST /a HTTP/1.1\r\nContent-Length: 7\r\nContent-Length: 7\r\nHost: x",
            RequestHead(b"POST", b"/a", 7, True, False, False),
        ),
        (
            b"GET /a HTTP/1.1\r\nHost:\r\nX: \t v \t",
            RequestHead(b"GET", b"/a", 0, True, False, False),
        ),
    ],
)
def test_request_heads(head: bytes, expected: RequestHead) -> None:
    assert parse_request_head(head) == expected


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2", "conflicting"),
        (b"POST /a HTTP/1.1\r\nContent-Length: -1", "bad Content-Length"),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1, 1", "bad Content-Length"),
        (b"POST /a HTTP/1.1\r\nContent-Length: 0x10", "bad Content-Length"),
        (b"POST /a HTTP/1.1\r\nContent-Length: 1234567890123", "bad Content-Length"),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", "both"),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", "Transfer-Encoding"),
        (b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked", "Tr"),
        (b"POST /a HTTP/1.1\r\nExpect: 200-ok", "Expect"),
        (b"POST /a HTTP/1.1\r\nContent-Length : 1", "malformed header field"),
        (b"POST /a HTTP/1.1\r\nX: a\r\n folded", "malformed header field"),
        (b"POST /a HTTP/1.1\r\nno colon", "malformed header field"),
        (b"POST /a HTTP/1.1\r\n: empty name", "malformed header field"),
        (b"POST /a HTTP/1.1\r\nX: a\nY: b", "bare CR, LF or NUL"),
        (b"POST /a HTTP/1.1\r\nX: a\rY: b", "bare CR, LF or NUL"),
        (b"POST /a HTTP/1.1\r\nX: a\0", "bare CR, LF or NUL"),
        (b"POST /a HTTP/2.0", "unsupported version"),
        (b"POST /a HTTP/1.1 extra", "malformed request line"),
        (b"POST  /a HTTP/1.1", "malformed request line"),
        (b"POST /a", "malformed request line"),
        (b"PO ST /a HTTP/1.1", "malformed request line"),
        (b"POST /\xff HTTP/1.1", "malformed request line"),
        (b"POST a HTTP/1.1", "neither a path"),
        (b"POST ftp://x/a HTTP/1.1", "neither a path"),
        # RFC 9112 3.2: exactly one valid Host in an HTTP/1.1 request (HTTP/1.0 may omit it).
        (b"POST /a HTTP/1.1\r\nContent-Length: 1", "exactly one Host"),
        (b"POST /a HTTP/1.1\r\nHost: a\r\nHost: a", "exactly one Host"),
        (b"POST /a HTTP/1.0\r\nHost: a\r\nHost: b", "exactly one Host"),
        (b"POST /a HTTP/1.1\r\nHost: a b", "bad Host"),
        (b"POST /a HTTP/1.1\r\nHost: a/b", "bad Host"),
        (b"POST /a HTTP/1.1\r\nHost: a@b", "bad Host"),
        # RFC 9110 5.1 / RFC 9112 5.1: a field name is a token, nothing before its colon.
        (b"POST /a HTTP/1.1\r\nHost: a\r\nX Y: 1", "malformed header field"),
        (b"POST /a HTTP/1.1\r\nHost: a\r\nX\t: 1", "malformed header field"),
        (b"POST /a HTTP/1.1\r\nHost: a\r\nX\x01Y: 1", "malformed header field"),
        (b"POST /a HTTP/1.1\r\nHost: a\r\nX(Y): 1", "malformed header field"),
        (b"POST /a HTTP/1.1\r\nHost : a", "malformed header field"),
        # RFC 9110 5.5: no control bytes in a field value (HTAB and SP are fine).
        (b"POST /a HTTP/1.1\r\nHost: a\r\nX: a\x01b", "control byte"),
        (b"POST /a HTTP/1.1\r\nHost: a\r\nX: a\x1b[2J", "control byte"),
        (b"POST /a HTTP/1.1\r\nHost: a\r\nX: a\x7f", "control byte"),
        (b"POST /a HTTP/1.1\r\nHost: a\x0b", "control byte"),
        (b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1\x0c", "control byte"),
        # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        (b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked", "HTTP/1.0"),
    ],
)
def test_bad_request_heads_are_decode_errors(head: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        parse_request_head(head)


def test_every_prefix_of_a_good_head_may_go_on_and_garbage_may_not() -> None:
    whole = IPXE + b"\r\n\r\n"
    for end in range(len(whole)):
        check_request_start(whole[:end])
    for garbage in (b"\x16\x03\x01\x02\x00", b"POST  /", b"GET\n", b"<?xml", b"POST /a HTTP/9\r\n"):
        with pytest.raises(DecodeError):
            check_request_start(garbage)


@given(st.binary(min_size=1, max_size=64))
def test_random_bytes_are_refused_from_the_start_or_could_be_a_request(data: bytes) -> None:
    try:
        check_request_start(data)
    except DecodeError:
        return
    # What passes is a request line in the making: a token, then visible ASCII and spaces.
    assert data.split(b"\r\n")[0].replace(b" ", b"").isascii()


@given(st.binary(max_size=300))
def test_only_decode_errors_escape_the_head_parsers(data: bytes) -> None:
    for parse in (parse_request_head, parse_response_head, check_request_start):
        with contextlib.suppress(DecodeError):
            parse(data)


@pytest.mark.parametrize(
    ("head", "status", "length", "chunked", "keep_alive"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10", 200, 10, False, True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close", 200, 10, False, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 10", 200, 10, False, False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive", 200, 1, False, True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked", 200, None, True, True),
        (b"HTTP/1.1 200 OK", 200, None, False, False),  # body to the end of the connection
        (b"HTTP/1.1 404", 404, None, False, False),
        (b"HTTP/1.1 100 Continue", 100, None, False, False),
    ],
)
def test_response_heads(
    head: bytes, status: int, length: int | None, chunked: bool, keep_alive: bool
) -> None:
    got = parse_response_head(head)
    assert (got.status, got.content_length, got.chunked, got.keep_alive) == (
        status,
        length,
        chunked,
        keep_alive,
    )


def test_response_fields_are_kept_with_lower_case_names() -> None:
    got = parse_response_head(b"HTTP/1.1 200 OK\r\nX-PeerDist-Busy: 1\r\nContent-Length: 0")
    assert got == ResponseHead(200, 0, False, True, {b"x-peerdist-busy": b"1"})


@pytest.mark.parametrize(
    ("head", "why"),
    [
        # RFC 9112 6.3 (3): both framings "ought to be handled as an error"; the client then
        # closes the connection (tests/net/test_net_retrieval_client_pool.py).
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3", "both"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\ntransfer-encoding: chunked", "both"),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked", "HTTP/1.0"),  # 6.1
        (b"HTTP/1.1 200 OK\r\nX Y: 1\r\nContent-Length: 3", "malformed header field"),
        (b"HTTP/1.1 200 OK\r\nX-PeerDist-Busy: 1\x01", "control byte"),
        (b"HTTP/1.1 200 OK\r\nX: \x7f\r\nContent-Length: 3", "control byte"),
    ],
)
def test_bad_response_heads_are_decode_errors(head: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        parse_response_head(head)


def test_field_values_may_hold_obs_text_tabs_and_spaces() -> None:
    got = parse_response_head(b"HTTP/1.1 200 OK\r\nX: a\tb c\x80\xff\r\nContent-Length: 0")
    assert got.fields == {b"x": b"a\tb c\x80\xff"}
    host = b"POST /a HTTP/1.1\r\nHost: [fe80::1%25eth0]:80\r\nContent-Length: 0"
    assert parse_request_head(host).content_length == 0


_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"expect", b"host"}
_NAMES = (
    st.text(alphabet=_TCHAR.decode(), min_size=1, max_size=12)
    .map(str.encode)
    .filter(lambda n: n.lower() not in _FRAMING)
)
_VALUES = st.binary(max_size=24).map(
    lambda v: bytes(b for b in v if b == 9 or 32 <= b != 127).strip(b" \t")
)


@given(_NAMES, _VALUES)
def test_token_names_and_visible_values_are_kept(name: bytes, value: bytes) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + name + b":" + value + b"\r\nContent-Length: 0"
    assert parse_response_head(head).fields == {name.lower(): value}


@given(_NAMES, _VALUES, st.sampled_from(sorted(set(range(32)) - {9} | {127})), st.data())
def test_any_control_byte_in_a_value_is_refused(
    name: bytes, value: bytes, control: int, data: st.DataObject
) -> None:
    at = data.draw(st.integers(0, len(value)))
    bad = value[:at] + bytes([control]) + value[at:]
    for head in (
        b"HTTP/1.1 200 OK\r\n" + name + b": " + bad + b"\r\nContent-Length: 0",
        b"POST /a HTTP/1.1\r\nHost: a\r\n" + name + b": " + bad,
    ):
        with pytest.raises(DecodeError):
            parse_response_head(head) if head.startswith(b"HTTP") else parse_request_head(head)


@given(_NAMES, st.binary(min_size=1, max_size=4), st.data())
def test_any_non_token_byte_in_a_name_is_refused(
    name: bytes, junk: bytes, data: st.DataObject
) -> None:
    junk = bytes(b for b in junk if b not in _TCHAR and b != ord(":")) or b" "
    at = data.draw(st.integers(0, len(name)))
    bad = name[:at] + junk + name[at:]
    with pytest.raises(DecodeError):
        parse_request_head(b"POST /a HTTP/1.1\r\nHost: a\r\n" + bad + b": 1")


@pytest.mark.parametrize("head", [b"HTTP/1.1 20 OK", b"HTTP/1.1 2000", b"HTTP/1.1 abc", b"ICY 200"])
def test_bad_status_lines(head: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_response_head(head)


def test_response_head_bytes() -> None:
    date = b"Mon, 01 Jan 2024 00:00:00 GMT"
    assert response_head(200, 7, date, b"X-PeerDist-Busy: 1\r\n") == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
        b"X-PeerDist-Busy: 1\r\n\r\n"
    )
    assert response_head(405, 0, date).startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert parse_response_head(response_head(413, 0, date)[:-4]).status == 413


CHUNKED = b"5;name=value\r\nhello\r\n0001\r\n \r\n0\r\nTrailer: x\r\n\r\n"


def test_chunked_body_whole_and_byte_by_byte() -> None:
    whole = ChunkedDecoder(100)
    assert whole.feed(CHUNKED + b"NEXT") == len(CHUNKED)  # stops at the end of the message
    assert whole.done and whole.body == b"hello "
    dribbled = ChunkedDecoder(100)
    used = sum(dribbled.feed(CHUNKED[i : i + 1]) for i in range(len(CHUNKED)))
    assert used == len(CHUNKED) and dribbled.done and dribbled.body == b"hello "


@pytest.mark.parametrize(
    "body",
    [b"x\r\n", b"-1\r\n", b"\r\n", b"123456789\r\n", b"5\r\nhello!!\r\n", b"1\nx", b"2\r\nab\n"],
)
def test_bad_chunked_bodies(body: bytes) -> None:
    decoder = ChunkedDecoder(1 << 20)
    with pytest.raises(DecodeError):
        decoder.feed(body)
    assert not decoder.oversized


def test_chunked_body_over_the_limit_is_refused_before_its_data() -> None:
    decoder = ChunkedDecoder(10)
    decoder.feed(b"8\r\n12345678\r\n")
    with pytest.raises(DecodeError, match="over 10 bytes"):
        decoder.feed(b"3\r\n")
    assert decoder.oversized and len(decoder.body) == 8


def test_endless_chunk_line_is_refused() -> None:
    decoder = ChunkedDecoder(10)
    with pytest.raises(DecodeError, match="too long"):
        for _ in range(MAX_HEAD):
            decoder.feed(b"0;ext=aaaaaaaa")


@given(st.binary(max_size=200), st.integers(1, 17))
def test_chunked_decoder_raises_only_decode_errors(data: bytes, step: int) -> None:
    decoder = ChunkedDecoder(64)
    try:
        for i in range(0, len(data), step):
            decoder.feed(data[i : i + step])
    except DecodeError:
        pass
    assert len(decoder.body) <= 64


def test_head_cache_parses_once_and_stays_bounded() -> None:
    calls: list[bytes] = []

    def parse(raw: bytes) -> RequestHead:
        calls.append(raw)
        return parse_request_head(raw)

    cache = HeadCache(parse)
    assert cache(IPXE) is cache(IPXE)
    assert calls == [IPXE]
    for n in range(200):
        cache(b"POST /%d HTTP/1.1\r\nHost: x" % n)
    assert len(cache._heads) <= 64
    with pytest.raises(DecodeError):
        cache(b"garbage")
    with pytest.raises(DecodeError):
        cache(b"garbage")  # failures are not remembered
    assert calls.count(b"garbage") == 2
