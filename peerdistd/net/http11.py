"""A strict sans-IO HTTP/1.1 codec for the one exchange MS-PCCRR makes (PROTOCOLS.md 2.1).

A POST whose body is framed by Content-Length (or chunked), answered with a Content-Length
body, on keep-alive connections. Bytes in, heads and bodies out; no sockets here. Anything
outside that shape raises :class:`DecodeError`; rules cite RFC 9112 / RFC 9110.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final, Generic, TypeVar
from urllib.parse import unquote_to_bytes

from peerdistd.errors import DecodeError

HEAD_END: Final = b"\r\n\r\n"
MAX_HEAD: Final = 8192  # start line and fields, HEAD_END included (aiohttp caps a line at 8190)
_MAX_LENGTH_DIGITS: Final = 12  # far above any body we take; keeps int() cheap and bounded
_CACHED_HEADS: Final = 64
_MAX_CHUNK_LINE: Final = 1024  # chunk-size line with extensions, or one trailer line
_REASONS: Final = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
}
_Head = TypeVar("_Head")
_CHUNK_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,8}")
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_TOKEN: Final = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"  # RFC 9110 5.6.2 tchar
_LINE: Final = re.compile(_TOKEN + rb"{1,32} [!-~]+ [!-~]+")  # visible ASCII, single spaces
_LINE_START: Final = re.compile(  # what a request line cut short can look like
    _TOKEN + rb"{0,32}|" + _TOKEN + rb"{1,32} (?:[!-~]+(?: [!-~]*\r?)?)?"
)
_FIELD_NAME: Final = re.compile(_TOKEN + rb"+")  # RFC 9110 5.1: field-name = token
# RFC 9110 5.5: field-vchar is VCHAR or obs-text, with SP and HTAB between; every other control
# byte (NUL, CR and LF included, 9112 5.5) is refused rather than passed on.
_FIELD_CONTROL: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 3.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ], the host an IP-literal in
# brackets or a reg-name / IPv4address (percent-escapes and sub-delims allowed).
_HOST: Final = re.compile(rb"(?:\[[0-9A-Za-z:.%~_-]+\]|[-0-9A-Za-z._~%!$&'()*+,;=]*)(?::[0-9]*)?")


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request head. ``content_length`` is None when the body is chunked."""

    method: bytes
    path: bytes  # origin-form path: query cut, percent-escapes decoded
    content_length: int | None
    keep_alive: bool
    expect_continue: bool
    http10: bool


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """A parsed status line and fields; ``content_length`` None means chunked or to-close."""

    status: int
    content_length: int | None
    chunked: bool
    keep_alive: bool
    fields: dict[bytes, bytes]  # lower-case names, other than the framing ones above


@dataclass(frozen=True, slots=True)
class _Fields:
    content_length: int | None
    chunked: bool
    close: bool
    keep_alive: bool
    expect: bytes | None
    hosts: int  # how many Host fields (each checked against the Host grammar)
    other: dict[bytes, bytes]


def parse_request_head(head: bytes) -> RequestHead:
    """The head of a request (``head`` ends before HEAD_END); DecodeError if it is not HTTP/1.x."""
    _check_bytes(head)
    lines = head.split(b"\r\n")
    method, target, http10 = _request_line(lines[0])
    path = _path(target)
    fields = _fields(lines)
    _check_framing(fields, http10)
    length = 0 if fields.content_length is None and not fields.chunked else fields.content_length
    keep_alive = (fields.keep_alive or not http10) and not fields.close  # RFC 9112 9.3
    expect = fields.expect
    if expect is not None and expect.lower() != b"100-continue":
        raise DecodeError(f"unsupported Expect {expect!r}", 0)
    # RFC 9112 3.2: an HTTP/1.1 request without Host, or any request with two, or with an
    # invalid one, is answered 400.
    if fields.hosts > 1 or (fields.hosts == 0 and not http10):
        raise DecodeError("a request needs exactly one Host field", 0)
    return RequestHead(method, path, length, keep_alive, expect is not None, http10)


def check_request_start(start: bytes) -> None:
    """DecodeError unless ``start``, a head cut short, can still become a valid request.

    Garbage is refused at once rather than when the head cap or the upload timer runs out.
    """
    line, crlf, rest = start.partition(b"\r\n")
    if not crlf:
        if not _LINE_START.fullmatch(line):
            raise DecodeError("not an HTTP request line", 0)
        return
    _request_line(line)
    _check_bytes(rest.rpartition(b"\r\n")[0])


def parse_response_head(head: bytes) -> ResponseHead:
    """The head of a response (``head`` ends before HEAD_END)."""
    _check_bytes(head)
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code = rest[:3]
    if len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise DecodeError("malformed status line", 0)
    http10 = _version(version)
    fields = _fields(lines)
    _check_framing(fields, http10)  # the client then drops the connection (6.3 (3))
    chunked = fields.chunked
    length = None if chunked else fields.content_length
    keep_alive = (fields.keep_alive if http10 else True) and not fields.close
    if length is None and not chunked:
        keep_alive = False  # the body runs to the end of the connection (6.3 (8))
    return ResponseHead(int(code), length, chunked, keep_alive, fields.other)


class HeadCache(Generic[_Head]):
    """Parsed heads by their exact bytes, parsed once: a peer repeats its head byte for byte.

    Bounded (cleared when full), so hostile peers cost at most a parse each, as without it.
    """

    __slots__ = ("_heads", "_parse")

    def __init__(self, parse: Callable[[bytes], _Head]) -> None:
        self._parse = parse
        self._heads: dict[bytes, _Head] = {}

    def __call__(self, raw: bytes) -> _Head:
        head = self._heads.get(raw)
        if head is None:
            head = self._parse(raw)  # a DecodeError is raised, and nothing cached
            if len(self._heads) >= _CACHED_HEADS:
                self._heads.clear()
            self._heads[raw] = head
        return head


def response_head(status: int, length: int, date: bytes, extra: bytes = b"") -> bytes:
    """A status line and fields for a ``length``-byte body; ``extra`` is ready-made lines."""
    return b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n" % (
        status,
        _REASONS.get(status, b"Unknown"),
        length,
        date,
        extra,
    )


def http_date(now: float) -> bytes:
    """An IMF-fixdate (RFC 9110 5.6.7) for the Date field."""
    return formatdate(now, usegmt=True).encode()


def _check_bytes(head: bytes) -> None:
    # RFC 9112 2.2: a bare CR or LF, or a NUL, inside a head is an attack or garbage.
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf or b"\0" in head:
        raise DecodeError("bare CR, LF or NUL in the head")


def _check_framing(fields: _Fields, http10: bool) -> None:
    """RFC 9112 6.1 / 6.3 (3): both framings at once is how messages get smuggled or responses
    split, and Transfer-Encoding in an HTTP/1.0 message means its framing is faulty."""
    if fields.chunked and fields.content_length is not None:
        raise DecodeError("both Transfer-Encoding and Content-Length", 0)
    if fields.chunked and http10:
        raise DecodeError("Transfer-Encoding in an HTTP/1.0 message", 0)


def _request_line(line: bytes) -> tuple[bytes, bytes, bool]:
    """``(method, target, http10)``: RFC 9112 3, method SP request-target SP HTTP-version."""
    if not _LINE.fullmatch(line):
        raise DecodeError("malformed request line", 0)
    method, target, version = line.split(b" ")
    return method, target, _version(version)


def _version(version: bytes) -> bool:
    """True for HTTP/1.0, False for HTTP/1.1; DecodeError for anything else."""
    if version == b"HTTP/1.1":
        return False
    if version == b"HTTP/1.0":
        return True
    raise DecodeError(f"unsupported version {version[:16]!r}", 0)


def _path(target: bytes) -> bytes:
    if target[:1] != b"/":
        scheme, sep, rest = target.partition(b"://")  # absolute-form, RFC 9112 3.2.2
        if not sep or scheme.lower() != b"http":
            raise DecodeError("request target is neither a path nor an http URL", 0)
        target = b"/" + rest.partition(b"/")[2]
    path = target.partition(b"?")[0]
    return unquote_to_bytes(path) if b"%" in path else path


def _fields(lines: list[bytes]) -> _Fields:
    """The header fields after the start line (RFC 9112 5)."""
    length: int | None = None
    chunked = close = keep_alive = False
    expect: bytes | None = None
    hosts = 0
    other: dict[bytes, bytes] = {}
    offset = len(lines[0]) + 2
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # 5.1: the name is a token, so no whitespace in it or before the colon; 5.2: obs-fold
        # (a line starting with whitespace) is refused.
        if not colon or not _FIELD_NAME.fullmatch(name):
            raise DecodeError("malformed header field", offset)
        name = name.lower()
        value = value.strip(b" \t")
        if _FIELD_CONTROL.search(value):
            raise DecodeError("control byte in a header field value", offset)
        if name == b"content-length":
            # RFC 9110 8.6: digits only; a repeated field must repeat the same value.
            if not value.isdigit() or len(value) > _MAX_LENGTH_DIGITS:
                raise DecodeError(f"bad Content-Length {value[:20]!r}", offset)
            if length is not None and int(value) != length:
                raise DecodeError("conflicting Content-Length fields", offset)
            length = int(value)
        elif name == b"transfer-encoding":
            if value.lower() != b"chunked" or chunked:  # 6.1: chunked is the only coding we take
                raise DecodeError(f"unsupported Transfer-Encoding {value[:20]!r}", offset)
            chunked = True
        elif name == b"connection":
            tokens = [t.strip(b" \t") for t in value.lower().split(b",")]
            close = close or b"close" in tokens
            keep_alive = keep_alive or b"keep-alive" in tokens
        elif name == b"expect":
            expect = value
        elif name == b"host":
            if not _HOST.fullmatch(value):
                raise DecodeError(f"bad Host {value[:40]!r}", offset)
            hosts += 1
        else:
            other[name] = value
        offset += len(line) + 2
    return _Fields(length, chunked, close, keep_alive, expect, hosts, other)


class ChunkedDecoder:
    """Decodes a chunked body (RFC 9112 7.1) into ``body``, refusing more than ``limit`` bytes.

    ``feed`` returns how many bytes it used; it stops at the end of the message (``done``).
    """

    __slots__ = ("_left", "_line", "_state", "body", "done", "limit", "oversized")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.body = bytearray()
        self.done = False
        self.oversized = False
        self._state = _SIZE
        self._left = 0  # bytes left in the current chunk
        self._line = bytearray()  # a size, CRLF or trailer line cut short by the last feed

    def feed(self, data: bytes | bytearray) -> int:
        pos, end = 0, len(data)
        while pos < end and not self.done:
            if self._state == _DATA:
                take = min(self._left, end - pos)
                self.body += data[pos : pos + take]
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
                continue
            line, pos = self._take_line(data, pos, end)
            if line is None:
                break
            self._line_done(line)
        return pos

    def _take_line(self, data: bytes | bytearray, pos: int, end: int) -> tuple[bytes | None, int]:
        newline = data.find(b"\n", pos, end)
        if newline < 0:
            self._line += data[pos:end]
            if len(self._line) > _MAX_CHUNK_LINE:
                raise DecodeError("chunk line too long")
            return None, end
        self._line += data[pos : newline + 1]
        line = bytes(self._line)
        self._line.clear()
        if len(line) > _MAX_CHUNK_LINE or not line.endswith(b"\r\n"):
            raise DecodeError("malformed chunk line")
        return line[:-2], newline + 1

    def _line_done(self, line: bytes) -> None:
        if self._state == _DATA_END:
            if line:
                raise DecodeError("chunk data longer than its size")
            self._state = _SIZE
        elif self._state == _TRAILER:
            self.done = not line  # trailer fields are read and dropped (7.1.2)
        else:
            size = line.partition(b";")[0].strip(b" \t")  # 7.1.1: extensions are ignored
            if not _CHUNK_SIZE.fullmatch(size):
                raise DecodeError(f"bad chunk size {size[:16]!r}")
            self._left = int(size, 16)
            if len(self.body) + self._left > self.limit:
                self.oversized = True
                raise DecodeError(f"chunked body over {self.limit} bytes")
            self._state = _DATA if self._left else _TRAILER


_SIZE, _DATA, _DATA_END, _TRAILER = range(4)
