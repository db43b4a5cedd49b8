"""MSG_BLK block encryption (PROTOCOLS.md 2.4): AES-CBC keyed with Kp[:keylen].

A fresh 16-byte IV per message travels after the ciphertext. We send PKCS#7 padding (what
.NET and the real iPXE client accept) and on receipt cut the plaintext to the known block
length instead of trusting the padding bytes.
"""

from __future__ import annotations

import secrets
from typing import Final

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrr import CryptoAlgo

IV_SIZE: Final = 16
AES_BLOCK: Final = 16
KEY_SIZES: Final = {
    CryptoAlgo.NONE: 0,
    CryptoAlgo.AES_128: 16,
    CryptoAlgo.AES_192: 24,
    CryptoAlgo.AES_256: 32,
}

Buffer = bytes | bytearray | memoryview


def key_size(algo: int) -> int:
    """Key length in bytes for a CryptoAlgoId (0 for plaintext)."""
    try:
        return KEY_SIZES[CryptoAlgo(algo)]
    except ValueError:
        raise DecodeError(f"unknown CryptoAlgoId {algo}") from None


def _key(algo: int, secret: bytes) -> bytes:
    size = key_size(algo)
    # pitfall 8: the key is the first keylen bytes of Kp, never the whole 32-byte Kp.
    if len(secret) < size:
        raise DecodeError(f"a {len(secret)}-byte secret cannot key {CryptoAlgo(algo).name}")
    return secret[:size]


def ciphertext_size(algo: int, plaintext_size: int) -> int:
    """Size of the Block field: PKCS#7 always adds 1..16 bytes; plaintext is sent as is."""
    if key_size(algo) == 0:
        return plaintext_size
    return (plaintext_size // AES_BLOCK + 1) * AES_BLOCK


def new_iv() -> bytes:
    return secrets.token_bytes(IV_SIZE)


def encrypt_into(algo: int, secret: bytes, iv: bytes, plaintext: Buffer, out: memoryview) -> None:
    """Write the Block field for ``plaintext`` into ``out`` (exactly ``ciphertext_size`` long)."""
    size = len(plaintext)
    if len(out) != ciphertext_size(algo, size):
        raise ValueError("output buffer does not match the ciphertext size")
    if key_size(algo) == 0:
        out[:] = plaintext
        return
    encryptor = Cipher(algorithms.AES(_key(algo, secret)), modes.CBC(iv)).encryptor()
    whole = size - size % AES_BLOCK
    if whole:
        # update_into wants room for one block more than it writes: the padding block is it.
        encryptor.update_into(memoryview(plaintext)[:whole], out)
    pad = AES_BLOCK - size % AES_BLOCK
    tail = bytes(memoryview(plaintext)[whole:]) + bytes((pad,)) * pad
    out[whole:] = encryptor.update(tail) + encryptor.finalize()


def encrypt(
    algo: int, secret: bytes, plaintext: Buffer, iv: bytes | None = None
) -> tuple[bytes, bytes]:
    """``(block_field, iv)`` for ``plaintext``; the IV is random unless given (empty if none)."""
    if key_size(algo) == 0:
        return bytes(plaintext), b""
    iv = new_iv() if iv is None else iv
    out = bytearray(ciphertext_size(algo, len(plaintext)))
    encrypt_into(algo, secret, iv, plaintext, memoryview(out))
    return bytes(out), iv


def decrypt(algo: int, secret: bytes, iv: bytes, block: Buffer, block_length: int) -> bytes:
    """The first ``block_length`` plaintext bytes of a received Block field (2.4)."""
    if len(block) < block_length:
        raise DecodeError(f"Block of {len(block)} bytes is shorter than {block_length}")
    if key_size(algo) == 0:
        return bytes(memoryview(block)[:block_length])
    if len(block) % AES_BLOCK:
        raise DecodeError(f"ciphertext of {len(block)} bytes is not 16-aligned")
    if len(iv) != IV_SIZE:
        raise DecodeError(f"IV of {len(iv)} bytes, expected {IV_SIZE}")
    # CBC decrypts any whole-block prefix on its own: skip the padding block(s) we would cut.
    needed = -(-block_length // AES_BLOCK) * AES_BLOCK
    decryptor = Cipher(algorithms.AES(_key(algo, secret)), modes.CBC(iv)).decryptor()
    plain = decryptor.update(memoryview(block)[:needed])
    return plain if needed == block_length else plain[:block_length]
