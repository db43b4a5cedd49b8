"""MS-PCCRC hash algorithms and key derivation (PROTOCOLS.md 1.2, [MS-PCCRC] 2.2)."""

from __future__ import annotations

import enum
import hashlib
import hmac as _hmac
from collections.abc import Callable
from typing import Any

from peerdistd.errors import InvalidParameter

V1_BLOCK_SIZE = 65536
V1_SEGMENT_SIZE = 32 * 1024 * 1024
V2_MAX_SEGMENT_SIZE = 128 * 1024

# PROTOCOLS 1.2 item 6 and pitfall 1: UTF-16LE "MS_P2P_CACHING" plus a 2-byte NUL, not ASCII.
SEGMENT_ID_MAGIC = "MS_P2P_CACHING\0".encode("utf-16-le")

_TRUNCATED = 32  # V2 digests are the first 32 bytes of SHA-512 (not SHA-512/256)


class HashAlgorithm(enum.Enum):
    """A content-information hash; the value is its wire id (V1 dwHashAlgo, V2 bHashAlgo)."""

    SHA256 = 0x800C
    SHA384 = 0x800D
    SHA512 = 0x800E
    TRUNCATED_SHA512 = 0x04

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self]

    @property
    def label(self) -> str:
        """Short lower-case name, as used on the command line and in JSON."""
        return _LABELS[self]

    @property
    def version(self) -> int:
        """The content-information version this algorithm belongs to."""
        return 2 if self is HashAlgorithm.TRUNCATED_SHA512 else 1

    def digest(self, data: bytes | memoryview) -> bytes:
        """H(data); for V2 the first 32 bytes of SHA-512 (PROTOCOLS 1.2)."""
        return _CONSTRUCTORS[self](data).digest()[: _DIGEST_SIZES[self]]

    def hmac(self, key: bytes, msg: bytes) -> bytes:
        """HMAC built on H; for V2 a full HMAC-SHA-512 whose *output* is truncated (1.2)."""
        return _hmac.digest(key, msg, _DIGESTMODS[self])[: _DIGEST_SIZES[self]]

    @classmethod
    def from_name(cls, name: str) -> HashAlgorithm:
        """The V1 algorithm named ``sha256``, ``sha384`` or ``sha512``."""
        try:
            return _V1_BY_NAME[name.lower()]
        except KeyError:
            raise InvalidParameter(
                f"unknown hash algorithm {name!r} (expected sha256, sha384 or sha512)"
            ) from None


_DIGEST_SIZES = {
    HashAlgorithm.SHA256: 32,
    HashAlgorithm.SHA384: 48,
    HashAlgorithm.SHA512: 64,
    HashAlgorithm.TRUNCATED_SHA512: _TRUNCATED,
}
_LABELS = {
    HashAlgorithm.SHA256: "sha256",
    HashAlgorithm.SHA384: "sha384",
    HashAlgorithm.SHA512: "sha512",
    HashAlgorithm.TRUNCATED_SHA512: "truncated-sha512",
}
_CONSTRUCTORS: dict[HashAlgorithm, Callable[[Any], hashlib._Hash]] = {
    HashAlgorithm.SHA256: hashlib.sha256,
    HashAlgorithm.SHA384: hashlib.sha384,
    HashAlgorithm.SHA512: hashlib.sha512,
    HashAlgorithm.TRUNCATED_SHA512: hashlib.sha512,
}
_DIGESTMODS = {
    HashAlgorithm.SHA256: "sha256",
    HashAlgorithm.SHA384: "sha384",
    HashAlgorithm.SHA512: "sha512",
    HashAlgorithm.TRUNCATED_SHA512: "sha512",
}
_V1_BY_NAME = {
    a.label: a for a in (HashAlgorithm.SHA256, HashAlgorithm.SHA384, HashAlgorithm.SHA512)
}


def server_secret_key(passphrase: bytes, version: int) -> bytes:
    """Ks from the server passphrase: V1 SHA-256 (whatever H is), V2 T(x) (PROTOCOLS 1.2)."""
    if version == 1:
        return hashlib.sha256(passphrase).digest()
    if version == 2:
        return hashlib.sha512(passphrase).digest()[:_TRUNCATED]
    raise InvalidParameter(f"unknown content information version {version}")


def segment_secret(algorithm: HashAlgorithm, ks: bytes, hod: bytes) -> bytes:
    """Kp = HMAC(key=Ks, msg=HoD); pitfall 2: not Hash(HoD + Ks) as 2.3.1.1 says."""
    return algorithm.hmac(ks, hod)


def segment_id(algorithm: HashAlgorithm, kp: bytes, hod: bytes) -> bytes:
    """HoHoDk = HMAC(key=Kp, msg=HoD || MAGIC), the segment id on the wire."""
    return algorithm.hmac(kp, hod + SEGMENT_ID_MAGIC)
