"""Windows server secrets: ``netsh branchcache exportkey`` files and ``set key passphrase=``.

Export file ([MS-PCCRC] 2.5, PROTOCOLS.md 1.2): AES-256-CBC with PKCS7 padding and an all-zero
IV; the key is SHA-256 of the UTF-16LE passphrase (no NUL); the plaintext is SHA-256(secret
key) followed by the secret key, the server passphrase from which Ks is derived.

A passphrase set with ``netsh branchcache set key passphrase=TEXT`` is the secret key TEXT in
UTF-16LE without a NUL, so Ks = H(UTF-16LE(TEXT)). Windows does not document this; it is how
Microsoft's conformance suite (microsoft/WindowsProtocolTestSuites, BranchCache) derives Ks
from the passphrase it gives its Windows content server with ``netsh branchcache set key``:
``HashGeneration(string secret, ...)`` takes ``Encoding.Unicode.GetBytes(secret)``, and the
suite's PCCRC debug tool checks a Windows server's segment secrets the same way. The same
encoding as the export file's own key. Not checked against a live Windows machine here.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peerdistd.errors import ConfigError, DecodeError, VerificationError

_BLOCK = 16
_DIGEST = 32
_ZERO_IV = bytes(_BLOCK)
MAX_EXPORT_SIZE = 64 * 1024  # a key file is tens of bytes; refuse anything absurd
MAX_PASSPHRASE_CHARS = 1024  # far beyond any netsh passphrase; the secret stays small


def passphrase_secret(passphrase: str) -> bytes:
    """The server secret key ``netsh branchcache set key passphrase=`` makes of ``passphrase``."""
    if not passphrase or len(passphrase) > MAX_PASSPHRASE_CHARS:
        raise ConfigError("passphrase", f"must have 1 to {MAX_PASSPHRASE_CHARS} characters")
    try:
        return passphrase.encode("utf-16-le")
    except UnicodeEncodeError as exc:  # a lone surrogate from a mis-decoded file
        raise ConfigError("passphrase", f"must be text: {exc.reason}") from None


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
