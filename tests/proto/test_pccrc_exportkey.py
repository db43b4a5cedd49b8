"""``netsh branchcache exportkey`` files, checked against an independent construction."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peerdistd.errors import DecodeError, VerificationError
from peerdistd.proto.exportkey import decrypt_exportkey, encrypt_exportkey

SECRET = bytes.fromhex("2a3d73eb435e9f2b8a344267e7467a3c7385c6e055e2b4d30dfec7c38b0ed72c")


def windows_export(secret: bytes, passphrase: str) -> bytes:
    """Built by hand per [MS-PCCRC] 2.5: AES-256-CBC, zero IV, PKCS7, key SHA-256(UTF-16)."""
    plain = hashlib.sha256(secret).digest() + secret
    pad = 16 - len(plain) % 16
    plain += bytes([pad]) * pad
    key = hashlib.sha256(passphrase.encode("utf-16-le")).digest()
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return enc.update(plain) + enc.finalize()


def test_decrypts_a_hand_built_export() -> None:
    data = windows_export(SECRET, "Passw0rd-ü")
    assert len(data) == 80  # 64 bytes of plaintext + a whole block of padding
    assert decrypt_exportkey(data, "Passw0rd-ü") == SECRET


def test_encrypt_matches_the_hand_built_export() -> None:
    assert encrypt_exportkey(SECRET, "pw") == windows_export(SECRET, "pw")
    odd = b"seventeen bytes!!"
    assert decrypt_exportkey(encrypt_exportkey(odd, "pw"), "pw") == odd


def test_wrong_passphrase_is_a_verification_error() -> None:
    data = windows_export(SECRET, "right")
    with pytest.raises(VerificationError):
        decrypt_exportkey(data, "wrong")


def test_tampered_prefix_is_a_verification_error() -> None:
    plain_wrong = windows_export(SECRET, "pw")
    # Change the secret but keep a valid padding: the SHA-256 prefix no longer matches.
    key = hashlib.sha256("pw".encode("utf-16-le")).digest()
    plain = bytes(32) + SECRET + bytes([16]) * 16
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    with pytest.raises(VerificationError):
        decrypt_exportkey(enc.update(plain) + enc.finalize(), "pw")
    assert plain_wrong != plain


@pytest.mark.parametrize("data", [b"", bytes(15), bytes(81)])
def test_malformed_sizes_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decrypt_exportkey(data, "pw")
