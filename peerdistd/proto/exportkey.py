"""The ``netsh branchcache exportkey`` file ([MS-PCCRC] 2.5, PROTOCOLS.md 1.2).

AES-256-CBC with PKCS7 padding and an all-zero IV; the key is SHA-256 of the UTF-16LE
passphrase (no NUL); the plaintext is SHA-256(secret key) followed by the secret key, the
server passphrase from which Ks is derived.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peerdistd.errors import DecodeError, VerificationError

_BLOCK = 16
_DIGEST = 32
_ZERO_IV = bytes(_BLOCK)
MAX_EXPORT_SIZE = 64 * 1024  # a key file is tens of bytes; refuse anything absurd


def _cipher(passphrase: str) -> Cipher[modes.CBC]:
    key = hashlib.sha256(passphrase.encode("utf-16-le")).digest()
    return Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV))


def decrypt_exportkey(data: bytes, passphrase: str) -> bytes:
    """The server secret key inside an export file; VerificationError on a wrong passphrase."""
    if not data or len(data) % _BLOCK or len(data) > MAX_EXPORT_SIZE:
        raise DecodeError(f"an export file is a non-empty multiple of 16 bytes, not {len(data)}", 0)
    decryptor = _cipher(passphrase).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(_BLOCK * 8).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise VerificationError("cannot decrypt the key file: wrong passphrase?") from None
    digest, secret = plain[:_DIGEST], plain[_DIGEST:]
    if not secret or not hmac.compare_digest(digest, hashlib.sha256(secret).digest()):
        raise VerificationError("the key file does not verify: wrong passphrase?")
    return secret


def encrypt_exportkey(secret: bytes, passphrase: str) -> bytes:
    """An export file holding ``secret``, as ``netsh branchcache importkey`` reads it."""
    padder = padding.PKCS7(_BLOCK * 8).padder()
    plain = padder.update(hashlib.sha256(secret).digest() + secret) + padder.finalize()
    encryptor = _cipher(passphrase).encryptor()
    return encryptor.update(plain) + encryptor.finalize()
