"""MS-PCCRD wire vocabulary and safe parsing: namespaces, SOAP envelope, scope codecs.

Helpers of :mod:`peerdistd.proto.pccrd`. XML goes through defusedxml with DTDs and
entities forbidden, after a size cap; every failure is a :class:`DecodeError`.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from peerdistd.errors import DecodeError

# The biggest legal UDP payload is 65507 bytes; nothing PeerDist sends comes near 32 KiB.
MAX_MESSAGE_SIZE: Final = 32 * 1024
MAX_SCOPES: Final = 255  # V2 Segment Hash Count is a u8 (2.2.3.3); V1 is held to the same
MAX_XADDRS: Final = 16
SEGMENT_ID_SIZES: Final = (32, 48, 64)  # HoHoDk of SHA-256/384/512 ([MS-PCCRC] 2.2)
MAX_URI: Final = 256

SOAP: Final = "http://www.w3.org/2003/05/soap-envelope"  # 2.2.1
WSA: Final = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
WSD: Final = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
PEERDIST: Final = "http://schemas.microsoft.com/p2p/2007/09/PeerDistributionDiscovery"
DATA_TYPE: Final = {1: "PeerDistData", 2: "PeerDistDataV2"}  # 2.2.3.1 Types

_V2_SCOPE_HEAD = struct.Struct(">HB")  # 2.2.3.3: SegmentHashSize u16, Segment Hash Count u8


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a SOAP envelope every PeerDist message has (2.2.1)."""

    header: Element
    body: Element
    message_id: str

    @classmethod
    def parse(cls, data: bytes, action: str) -> Envelope:
        root = parse_xml(data)
        if root.tag != f"{{{SOAP}}}Envelope":
            raise DecodeError("not a SOAP 1.2 envelope")
        header = child(root, SOAP, "Header")
        got = text(child(header, WSA, "Action"))
        if got != action:
            raise DecodeError(f"Action {got[:80]!r} is not {action.rpartition('/')[2]}")
        message_id = uri(header.find(f"{{{WSA}}}MessageID"), "MessageID")
        return cls(header, child(root, SOAP, "Body"), message_id)


def parse_xml(data: bytes) -> Element:
    """The root element of ``data``: UTF-8, at most MAX_MESSAGE_SIZE, no DTD or entities."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"{len(data)}-byte message exceeds {MAX_MESSAGE_SIZE}", MAX_MESSAGE_SIZE)
    try:
        # SOAP-over-UDP messages are UTF-8; decoding here also makes a declared encoding moot.
        root: Element = fromstring(data.decode("utf-8"), forbid_dtd=True, forbid_entities=True)
    except UnicodeDecodeError as exc:
        raise DecodeError("message is not UTF-8", exc.start) from exc
    except ParseError as exc:
        raise DecodeError(f"malformed XML: {exc}") from exc
    except DefusedXmlException as exc:
        raise DecodeError(f"forbidden XML construct: {type(exc).__name__}") from exc
    return root


def child(parent: Element, ns: str, name: str) -> Element:
    found = parent.find(f"{{{ns}}}{name}")
    if found is None:
        raise DecodeError(f"missing <{name}>")
    return found


def text(element: Element) -> str:
    return (element.text or "").strip()


def uri(element: Element | None, name: str) -> str:
    """A MessageID / RelatesTo: present, one token, bounded."""
    value = text(element) if element is not None else ""
    if not value or len(value) > MAX_URI or any(c.isspace() for c in value):
        raise DecodeError(f"missing or malformed {name}")
    return value


def data_version(element: Element) -> int:
    """1 or 2, from the ``<wsd:Types>`` child naming PeerDistData or PeerDistDataV2."""
    # QName prefixes are the sender's choice; the local part names the PeerDist version.
    names = {t.rpartition(":")[2] for t in text(child(element, WSD, "Types")).split()}
    for version, name in DATA_TYPE.items():
        if name in names:
            return version
    raise DecodeError("Types names no PeerDist data type")


def app_sequence(element: Element | None) -> tuple[int, int]:
    """(InstanceId, MessageNumber); (0, 0) when absent, as iPXE ignores it (3.4)."""
    if element is None:
        return 0, 0
    try:
        return int(element.get("InstanceId", "0")), int(element.get("MessageNumber", "0"))
    except ValueError as exc:
        raise DecodeError("AppSequence attributes are not integers") from exc


def check_xaddr(xaddr: str) -> tuple[str, int]:
    """Split a bare ``ip:port`` / ``[v6]:port`` / ``host:port`` XAddr (3.4), or DecodeError."""
    host, sep, port = xaddr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or len(xaddr) > MAX_URI:
        raise DecodeError(f"XAddr {xaddr[:80]!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.partition("%")[0])
        except ValueError as exc:
            raise DecodeError(f"XAddr {xaddr[:80]!r}: bad IPv6 address") from exc
    elif not host or not all(c.isascii() and (c.isalnum() or c in ".-_") for c in host):
        raise DecodeError(f"XAddr {xaddr[:80]!r}: bad host")
    return host, int(port)


def decode_xaddrs(value: str) -> list[str]:
    # iPXE makes every whitespace-separated XAddr a peer (3.4).
    tokens = value.split()
    if not 0 < len(tokens) <= MAX_XADDRS:
        raise DecodeError(f"{len(tokens)} XAddrs: need 1..{MAX_XADDRS}")
    for token in tokens:
        check_xaddr(token)
    return tokens


def encode_v1_scopes(ids: Sequence[bytes]) -> str:
    # 3.3: hexBinary compared with strcmp; iPXE and Windows write upper case.
    return " ".join(sid.hex().upper() for sid in ids)


def decode_v1_scopes(value: str) -> tuple[bytes, ...]:
    tokens = value.split()
    if not 0 < len(tokens) <= MAX_SCOPES:
        raise DecodeError(f"{len(tokens)} scopes: need 1..{MAX_SCOPES}")
    return tuple(_segment_id(token) for token in tokens)


def _segment_id(token: str) -> bytes:
    try:
        # fromhex alone would accept inner spaces; isalnum leaves only letters and digits.
        sid = bytes.fromhex(token) if token.isascii() and token.isalnum() else b""
    except ValueError as exc:
        raise DecodeError(f"scope {token[:80]!r} is not hexBinary") from exc
    if len(sid) not in SEGMENT_ID_SIZES:
        raise DecodeError(f"scope {token[:80]!r} is not a 32/48/64-byte segment id")
    return sid


def encode_v2_scope(ids: Sequence[bytes]) -> str:
    size = len(ids[0]) if ids else 32
    if any(len(s) != size for s in ids) or len(ids) > MAX_SCOPES:
        raise ValueError("a V2 probe carries at most 255 segment ids, all of one size")
    return base64.b64encode(_V2_SCOPE_HEAD.pack(size, len(ids)) + b"".join(ids)).decode()


def decode_v2_scope(value: str) -> tuple[bytes, ...]:
    raw = b64(value)
    if len(raw) < _V2_SCOPE_HEAD.size:
        raise DecodeError("V2 scope shorter than its 3-byte head", 0)
    size, count = _V2_SCOPE_HEAD.unpack_from(raw)
    if size not in SEGMENT_ID_SIZES or count == 0:
        raise DecodeError(f"V2 scope: {count} ids of {size} bytes", 0)
    if len(raw) != _V2_SCOPE_HEAD.size + size * count:
        raise DecodeError(f"V2 scope: {len(raw) - 3} bytes for {count} ids of {size}", 3)
    return tuple(raw[3 + i * size : 3 + (i + 1) * size] for i in range(count))


def encode_v2_bits(counts: Sequence[int]) -> str:
    # 2.2.3.3: two bits per requested id in probe order, most significant first; the high bit
    # is "has the segment", the low one "has all its blocks" (a V2 segment is one block).
    out = bytearray(-(-2 * len(counts) // 8))
    for i, n in enumerate(counts):
        if n > 0:
            out[i // 4] |= 0b11 << (6 - 2 * (i % 4))
    return base64.b64encode(bytes(out)).decode()


def decode_v2_bits(value: str, requested: Sequence[bytes]) -> Iterator[tuple[bytes, int]]:
    raw = b64(value)
    if not requested or len(raw) != -(-2 * len(requested) // 8):
        raise DecodeError(f"V2 availability of {len(raw)} bytes for {len(requested)} ids")
    for i, sid in enumerate(requested):
        yield sid, (raw[i // 4] >> (7 - 2 * (i % 4))) & 1


def encode_block_counts(counts: Sequence[int]) -> str:
    # Pitfall 5: 8 hex digits per count (the XML example and iPXE), concatenated.
    return "".join(f"{min(n, 0xFFFFFFFF):08X}" for n in counts)


def decode_block_counts(scopes: str, counts: str) -> Iterator[tuple[bytes, int]]:
    ids = decode_v1_scopes(scopes)
    # iPXE reads 8 characters per scope and fails when scopes outnumber them (pccrd.c).
    if len(counts) < 8 * len(ids):
        raise DecodeError(f"BlockCount {counts[:80]!r} does not give 8 hex digits per scope")
    for i, sid in enumerate(ids):
        digits = counts[8 * i : 8 * i + 8]
        if not (digits.isascii() and digits.isalnum()):
            raise DecodeError(f"BlockCount {digits!r} is not hex")
        try:
            yield sid, int(digits, 16)
        except ValueError as exc:
            raise DecodeError(f"BlockCount {digits!r} is not hex") from exc


def b64(value: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise DecodeError("not base64") from exc
