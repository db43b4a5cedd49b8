"""MS-PCCRTP, PeerDist over HTTP (PROTOCOLS.md section 5), sans-IO.

Client side: the request headers of each protocol version (:func:`request_headers`,
:func:`missing_data_headers`) and the reading of an origin's answer (:func:`parse_answer`).
Server side: :func:`decide` turns a request's method and headers into a :class:`Reply`.
The header parsers accept RFC 9110 lists (5.6.1: case-insensitive names, optional spaces,
empty elements, ``;`` parameters, quoted strings); only :class:`DecodeError` escapes them.
"""

from __future__ import annotations

import enum
import string
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

from peerdistd.errors import DecodeError

__all__ = [
    "ACCEPT_ENCODING",
    "CONTENT_ENCODING",
    "PEERDIST",
    "PEERDIST_EX",
    "Answer",
    "Element",
    "PeerDistExParams",
    "PeerDistParams",
    "ProtocolVersion",
    "Reply",
    "ReplyKind",
    "accepts_peerdist",
    "decide",
    "fold_fields",
    "missing_data_headers",
    "parse_answer",
    "parse_list",
    "parse_peerdist",
    "parse_peerdist_ex",
    "request_headers",
]

PEERDIST: Final = "X-P2P-PeerDist"  # [MS-PCCRTP] 2.2; PROTOCOLS.md section 5
PEERDIST_EX: Final = "X-P2P-PeerDistEx"  # 2.2
ACCEPT_ENCODING: Final = "Accept-Encoding"
CONTENT_ENCODING: Final = "Content-Encoding"
CODING: Final = "peerdist"  # the content coding (2.2); compared case-insensitively
MAX_VALUE: Final = 8192  # a header value longer than this is refused before parsing
_TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)  # RFC 9110 5.6.2
_OWS = " \t"
_QDTEXT = frozenset(  # qdtext with obs-text (RFC 9110 5.6.4): Latin-1 bytes as characters
    chr(c) for c in (0x09, 0x20, 0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F), *range(0x80, 0x100))
)


class ProtocolVersion(enum.Enum):
    """The X-P2P-PeerDist Version a client speaks (2.2)."""

    V1_0 = (1, 0)  # Windows Vista/7/2008 R2: V1 content information only, no PeerDistEx
    V1_1 = (1, 1)  # Windows 8+ and iPXE: sends X-P2P-PeerDistEx with Min/MaxContentInformation

    @property
    def text(self) -> str:
        return f"{self.value[0]}.{self.value[1]}"


@dataclass(frozen=True, slots=True)
class Element:
    """One list element: ``name[=value]`` followed by ``;param=value`` pairs (names lower-case)."""

    name: str
    value: str | None = None
    params: tuple[tuple[str, str], ...] = ()


def parse_list(text: str) -> tuple[Element, ...]:
    """Parse a comma-separated header list; empty elements are skipped (RFC 9110 5.6.1)."""
    if len(text) > MAX_VALUE:
        raise DecodeError(f"header value longer than {MAX_VALUE} characters", MAX_VALUE)
    out: list[Element] = []
    pos, end = _skip(text, 0), len(text)
    while pos < end:
        if text[pos] == ",":
            pos = _skip(text, pos + 1)
            continue
        name, pos = _token(text, pos)
        value = None
        if pos < end and text[pos] == "=":
            value, pos = _value(text, pos + 1)
        params: list[tuple[str, str]] = []
        while (pos := _skip(text, pos)) < end and text[pos] == ";":
            pname, pos = _token(text, _skip(text, pos + 1))
            if pos >= end or text[pos] != "=":
                raise DecodeError(f"parameter {pname!r} has no value", pos)
            pvalue, pos = _value(text, pos + 1)
            params.append((pname.lower(), pvalue))
        if pos < end and text[pos] != ",":
            raise DecodeError(f"expected ',' or ';', found {text[pos]!r}", pos)
        out.append(Element(name.lower(), value, tuple(params)))
    return tuple(out)


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _OWS:
        pos += 1
    return pos


def _token(text: str, pos: int) -> tuple[str, int]:
    start = pos
    while pos < len(text) and text[pos] in _TCHAR:
        pos += 1
    if pos == start:
        found = repr(text[pos]) if pos < len(text) else "the end"
        raise DecodeError(f"expected a token, found {found}", pos)
    return text[start:pos], pos


def _value(text: str, pos: int) -> tuple[str, int]:
    """A token or a quoted-string (RFC 9110 5.6.4) right after '='."""
    if pos >= len(text) or text[pos] != '"':
        return _token(text, pos)
    chars: list[str] = []
    pos += 1
    while pos < len(text):
        c = text[pos]
        if c == '"':
            return "".join(chars), pos + 1
        if c == "\\" and pos + 1 < len(text) and text[pos + 1] in _QDTEXT | {'"', "\\"}:
            c, pos = text[pos + 1], pos + 1
        elif c not in _QDTEXT:
            raise DecodeError(f"character {c!r} not allowed in a quoted string", pos)
        chars.append(c)
        pos += 1
    raise DecodeError("unterminated quoted string", pos)


def fold_fields(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; repeated fields (``items()`` of a multidict) joined by ", " (5.3)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def accepts_peerdist(accept_encoding: str) -> bool:
    """True when Accept-Encoding names ``peerdist`` with a non-zero weight.

    ``*`` does not count: content information is no use to a client that did not ask for it.
    """
    for element in parse_list(accept_encoding):
        if element.name == CODING:
            return dict(element.params).get("q", "1") not in {"0", "0.", "0.0", "0.00", "0.000"}
    return False


@dataclass(frozen=True, slots=True)
class PeerDistParams:
    """X-P2P-PeerDist (2.2); unknown parameters are kept in ``extensions``."""

    version: tuple[int, int] | None = None
    content_length: int | None = None
    missing_data_request: bool = False
    extensions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class PeerDistExParams:
    """X-P2P-PeerDistEx (2.2): content information versions as (major, minor)."""

    min_content_information: tuple[int, int] | None = None
    max_content_information: tuple[int, int] | None = None
    make_hash_request: bool = False
    hash_request: bool = False
    extensions: tuple[tuple[str, str], ...] = ()


def parse_peerdist(text: str) -> PeerDistParams:
    """Parse an X-P2P-PeerDist value such as ``Version=1.1, MissingDataRequest=true``."""
    known, extensions = _params(text, ("version", "contentlength", "missingdatarequest"))
    version = known.get("version")
    length = known.get("contentlength")
    missing = known.get("missingdatarequest")
    return PeerDistParams(
        None if version is None else _version(*version),
        None if length is None else _length(*length),
        False if missing is None else _bool(*missing),
        extensions,
    )


def parse_peerdist_ex(text: str) -> PeerDistExParams:
    """Parse ``MinContentInformation=1.0, MaxContentInformation=2.0`` (and the hash flags)."""
    names = ("mincontentinformation", "maxcontentinformation", "makehashrequest", "hashrequest")
    known, extensions = _params(text, names)
    low, high, make, ask = (known.get(n) for n in names)
    return PeerDistExParams(
        None if low is None else _version(*low),
        None if high is None else _version(*high),
        False if make is None else _bool(*make),
        False if ask is None else _bool(*ask),
        extensions,
    )


def _params(
    text: str, names: tuple[str, ...]
) -> tuple[dict[str, tuple[str, str]], tuple[tuple[str, str], ...]]:
    """``name=value`` elements: known ones by name (with the text for errors), then the rest."""
    known: dict[str, tuple[str, str]] = {}
    extensions: list[tuple[str, str]] = []
    for element in parse_list(text):
        if element.value is None or element.params:
            raise DecodeError(f"{element.name!r} is not of the form Name=Value")
        if element.name in names:
            if element.name in known:
                raise DecodeError(f"{element.name!r} given twice")
            known[element.name] = (element.name, element.value)
        else:  # ignored, not refused: later protocol versions may add parameters
            extensions.append((element.name, element.value))
    return known, tuple(extensions)


def _version(name: str, value: str) -> tuple[int, int]:
    major, dot, minor = value.partition(".")
    digits = value.isascii() and major.isdigit() and minor.isdigit()  # no '²' or fullwidth
    if not (dot and digits and len(major) <= 3 and len(minor) <= 3):
        raise DecodeError(f"{name}: {value!r} is not a version major.minor")
    return int(major), int(minor)


def _length(name: str, value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 20 and int(value) < 1 << 64):
        raise DecodeError(f"{name}: {value!r} is not a byte count")
    return int(value)


def _bool(name: str, value: str) -> bool:
    if value.lower() not in {"true", "false"}:
        raise DecodeError(f"{name}: {value!r} is neither true nor false")
    return value.lower() == "true"


# --- client side -----------------------------------------------------------------------------


def request_headers(
    version: ProtocolVersion = ProtocolVersion.V1_1, max_content_information: int = 2
) -> dict[str, str]:
    """What a PeerDist client sends with its GET (3.1; iPXE sends the 1.1 form with 2.0)."""
    headers = {ACCEPT_ENCODING: CODING, PEERDIST: f"Version={version.text}"}
    if version is ProtocolVersion.V1_1:  # 2.2: a 1.1 client MUST send PeerDistEx
        headers[PEERDIST_EX] = (
            f"MinContentInformation=1.0, MaxContentInformation={max_content_information}.0"
        )
    return headers


def missing_data_headers(version: ProtocolVersion = ProtocolVersion.V1_1) -> dict[str, str]:
    """A missing-data request: identity only, never with peerdist in Accept-Encoding (3.1)."""
    return {
        ACCEPT_ENCODING: "identity",
        PEERDIST: f"Version={version.text}, MissingDataRequest=true",
    }


@dataclass(frozen=True, slots=True)
class Answer:
    """What an origin's response headers say in PeerDist terms."""

    peerdist: bool  # Content-Encoding: peerdist, the body is content information
    version: tuple[int, int] | None = None
    content_length: int | None = None  # of the identity body the content information stands for
    make_hash_request: bool = False  # identity now; the origin is making the hashes


def parse_answer(headers: Mapping[str, str]) -> Answer:
    """Read Content-Encoding, X-P2P-PeerDist and X-P2P-PeerDistEx of a response's headers."""
    fields = fold_fields(headers)
    codings = [e.name for e in parse_list(fields.get("content-encoding", ""))]
    if CODING in codings and codings != [CODING]:
        raise DecodeError(f"peerdist mixed with other content codings: {codings}")
    params = parse_peerdist(fields.get("x-p2p-peerdist", ""))
    ex = parse_peerdist_ex(fields.get("x-p2p-peerdistex", ""))
    return Answer(codings == [CODING], params.version, params.content_length, ex.make_hash_request)


# --- server side -----------------------------------------------------------------------------


class ReplyKind(enum.Enum):
    IDENTITY = "identity"  # the plain representation (Range honoured as usual)
    PEERDIST = "peerdist"  # 200, Content-Encoding: peerdist, body = content information
    MISSING_DATA = "missing-data"  # identity bytes for a client that found no peer (3.1)


@dataclass(frozen=True, slots=True)
class Reply:
    """What an origin answers to one request, and why (for its log)."""

    kind: ReplyKind
    reason: str
    content_version: int | None = None  # PEERDIST: 1 or 2
    version: ProtocolVersion | None = None  # the client's; the answer states it (3.2)
    make_hash_request: bool = False

    def identity_instead(self, reason: str, *, make_hash_request: bool = False) -> Reply:
        """Fall back to identity: hashes not ready (MakeHashRequest, 3.2) or not to be had."""
        return Reply(ReplyKind.IDENTITY, reason, None, self.version, make_hash_request)

    def headers(self, content_length: int) -> dict[str, str]:
        """The PeerDist response headers; ``content_length`` is that of the identity body."""
        out = {"Vary": ACCEPT_ENCODING}  # our own rule: caches must not mix the two encodings
        if self.kind is ReplyKind.PEERDIST and self.version is not None:
            out[CONTENT_ENCODING] = CODING
            out[PEERDIST] = f"Version={self.version.text}, ContentLength={content_length}"
        elif self.make_hash_request and self.version is not None:
            out[PEERDIST] = f"Version={self.version.text}"
            out[PEERDIST_EX] = "MakeHashRequest=true"
        return out


def decide(method: str, headers: Mapping[str, str], offered: Collection[int] = (1, 2)) -> Reply:
    """Choose the answer to a request (3.2); ``offered`` = content versions we can make.

    ``headers``: any mapping, or a multidict (see :func:`fold_fields`). Malformed PeerDist
    headers get identity, never an error: the download must go on.
    """
    fields = fold_fields(headers)
    try:
        peerdist = accepts_peerdist(fields.get("accept-encoding", ""))
        params = parse_peerdist(fields.get("x-p2p-peerdist", ""))
        ex_text = fields.get("x-p2p-peerdistex")
        ex = None if ex_text is None else parse_peerdist_ex(ex_text)
    except DecodeError as exc:
        return Reply(ReplyKind.IDENTITY, f"malformed PeerDist headers: {exc}")
    version = _protocol(params.version)
    if params.missing_data_request:
        # 3.1: MUST NOT come with peerdist; identity bytes are what the client needs anyway.
        why = "missing-data request" + (" (ignoring its peerdist)" if peerdist else "")
        return Reply(ReplyKind.MISSING_DATA, why, None, version)
    if not peerdist:
        return Reply(ReplyKind.IDENTITY, "peerdist not accepted")
    if method != "GET":  # Windows uses PeerDist for GET only (3.1)
        return Reply(ReplyKind.IDENTITY, f"peerdist not used for {method}")
    if version is None:
        return Reply(ReplyKind.IDENTITY, f"unsupported X-P2P-PeerDist version {params.version}")
    if version is ProtocolVersion.V1_0:
        ex = None  # a 1.0 client knows V1 only, whatever else it sends
    # 3.2: without PeerDistEx the answer is V1; with it, a version inside [Min, Max].
    choices = [v for v in offered if v in (1, 2) and _within(v, ex)]
    if not choices:
        return Reply(ReplyKind.IDENTITY, "no content information version in the client's range")
    return Reply(ReplyKind.PEERDIST, "peerdist", max(choices), version)


def _within(content_version: int, ex: PeerDistExParams | None) -> bool:
    if ex is None:
        return content_version == 1
    # A missing bound is read as 1.0: every PeerDist client understands V1.
    low = ex.min_content_information or (1, 0)
    high = ex.max_content_information or (1, 0)
    return low <= (content_version, 0) <= high


def _protocol(version: tuple[int, int] | None) -> ProtocolVersion | None:
    """1.0 as 1.0; any later 1.x as 1.1, the highest we speak; other majors are unknown."""
    if version is None or version[0] != 1:
        return None
    return ProtocolVersion.V1_0 if version[1] == 0 else ProtocolVersion.V1_1
