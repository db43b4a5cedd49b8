"""MSG_BLK block crypto (PROTOCOLS.md 2.4): Kp[:keylen], CBC, PKCS#7 out, trim in."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peerdistd.errors import DecodeError
from peerdistd.proto import blockcrypto
from peerdistd.proto.pccrr import CryptoAlgo

# NIST SP 800-38A F.2.1 / F.2.3 / F.2.5 (CBC encrypt, first block).
NIST_IV = bytes(range(16))
NIST_PT = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
NIST = {
    CryptoAlgo.AES_128: ("2b7e151628aed2a6abf7158809cf4f3c", "7649abac8119b246cee98e9b12e9197d"),
    CryptoAlgo.AES_192: (
        "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
        "4f021db243bc633d7178183a9fa071e8",
    ),
    CryptoAlgo.AES_256: (
        "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        "f58c4c04d6e5f1ba779eabfb5f7bfbd6",
    ),
}


@pytest.mark.parametrize("algo", list(NIST))
def test_key_is_the_first_keylen_bytes_of_kp(algo: CryptoAlgo) -> None:
    key_hex, ct_hex = NIST[algo]
    kp = (bytes.fromhex(key_hex) + b"\xee" * 32)[:32]  # trailing bytes must not matter
    block, iv = blockcrypto.encrypt(algo, kp, NIST_PT, NIST_IV)
    assert iv == NIST_IV
    assert block[:16] == bytes.fromhex(ct_hex)
    assert len(block) == 32  # a full PKCS#7 block follows a 16-aligned plaintext


@pytest.mark.parametrize("algo", [CryptoAlgo.AES_128, CryptoAlgo.AES_192, CryptoAlgo.AES_256])
@pytest.mark.parametrize("size", [1, 15, 16, 17, 1000, 65535, 65536])
def test_round_trip_and_pkcs7(algo: CryptoAlgo, size: int) -> None:
    kp = bytes(range(100, 132))
    plaintext = bytes(i * 7 % 251 for i in range(size))
    block, iv = blockcrypto.encrypt(algo, kp, plaintext)
    assert len(block) == (size // 16 + 1) * 16 == blockcrypto.ciphertext_size(algo, size)
    assert blockcrypto.decrypt(algo, kp, iv, block, size) == plaintext
    keylen = blockcrypto.KEY_SIZES[algo]
    raw = Cipher(algorithms.AES(kp[:keylen]), modes.CBC(iv)).decryptor().update(block)
    pad = 16 - size % 16
    assert raw == plaintext + bytes([pad]) * pad


def test_ivs_are_fresh_per_message() -> None:
    kp = bytes(32)
    (b1, iv1), (b2, iv2) = (blockcrypto.encrypt(1, kp, b"same") for _ in range(2))
    assert iv1 != iv2 and b1 != b2 and len(iv1) == 16


def test_receiver_trims_to_block_length_and_ignores_padding_bytes() -> None:
    kp = bytes(range(32))
    iv = bytes(16)
    # Zero padding (not PKCS#7), as some senders may use: still fine, we cut at the length.
    raw = b"hello" + bytes(11) + b"x" * 16
    block = Cipher(algorithms.AES(kp[:16]), modes.CBC(iv)).encryptor().update(raw)
    assert blockcrypto.decrypt(1, kp, iv, block, 5) == b"hello"


def test_plaintext_algo() -> None:
    block, iv = blockcrypto.encrypt(CryptoAlgo.NONE, b"", b"abc")
    assert (block, iv) == (b"abc", b"")
    assert blockcrypto.ciphertext_size(0, 3) == 3
    assert blockcrypto.decrypt(0, b"", b"", b"abcdef", 3) == b"abc"


def test_encrypt_into_writes_exactly_the_window() -> None:
    kp = bytes(range(32))
    out = bytearray(b"\xff" * 4 + bytes(48) + b"\xff" * 4)
    window = memoryview(out)[4:52]
    blockcrypto.encrypt_into(1, kp, NIST_IV, b"z" * 40, window)
    assert out[:4] == out[52:] == b"\xff" * 4
    assert blockcrypto.decrypt(1, kp, NIST_IV, bytes(out[4:52]), 40) == b"z" * 40
    with pytest.raises(ValueError, match="does not match"):
        blockcrypto.encrypt_into(1, kp, NIST_IV, b"z" * 40, memoryview(bytearray(40)))


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ((1, bytes(32), bytes(16), bytes(16), 17), "shorter than 17"),
        ((1, bytes(32), bytes(16), bytes(20), 5), "not 16-aligned"),
        ((1, bytes(32), bytes(8), bytes(16), 5), "IV of 8 bytes"),
        ((9, bytes(32), bytes(16), bytes(16), 5), "unknown CryptoAlgoId 9"),
        ((3, bytes(16), bytes(16), bytes(16), 5), "cannot key AES_256"),
    ],
)
def test_decrypt_rejects_bad_input(args: tuple[int, bytes, bytes, bytes, int], why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        blockcrypto.decrypt(*args)
