"""The node's server secret on disk, and importing a Windows export file."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from peerdistd.errors import ConfigError, VerificationError
from peerdistd.store.secret import (
    import_exportkey,
    load_or_create_secret,
    store_secret,
)


def test_created_at_first_use_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "server-secret"
    first = load_or_create_secret(path)
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(path) == first  # stable across calls
    assert [p.name for p in path.parent.iterdir()] == ["server-secret"]  # no temp files left
    assert load_or_create_secret(tmp_path / "other") != first  # random per node


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "server-secret"
    load_or_create_secret(path)
    path.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create_secret(path)


@pytest.mark.parametrize("size", [0, 4097])
def test_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "server-secret"
    path.write_bytes(b"x" * size)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=f"holds {size} bytes"):
        load_or_create_secret(path)


@pytest.mark.parametrize("size", [1, 26, 31, 33, 4096])
def test_secrets_of_other_lengths_are_kept(tmp_path: Path, size: int) -> None:
    # Windows secrets need not be 32 bytes: a netsh passphrase is its UTF-16LE text.
    path = tmp_path / "server-secret"
    store_secret(path, b"k" * size)
    assert load_or_create_secret(path) == b"k" * size


def test_a_directory_or_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigError):
        load_or_create_secret(tmp_path / "dir")
    target = tmp_path / "real"
    store_secret(target, bytes(32))
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(ConfigError):
        load_or_create_secret(tmp_path / "link")


def test_store_secret_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "server-secret"
    store_secret(path, b"a" * 32)
    store_secret(path, b"b" * 32)
    assert load_or_create_secret(path) == b"b" * 32
    with pytest.raises(ConfigError):
        store_secret(path, b"")
    with pytest.raises(FileExistsError):
        store_secret(path, b"c" * 32, replace=False)


def _export(secret: bytes, passphrase: str) -> bytes:
    plain = hashlib.sha256(secret).digest() + secret + bytes([16]) * 16
    key = hashlib.sha256(passphrase.encode("utf-16-le")).digest()
    enc = Cipher(algorithms.AES(key), modes.CBC(bytes(16))).encryptor()
    return enc.update(plain) + enc.finalize()


def test_import_exportkey_from_bytes_and_file(tmp_path: Path) -> None:
    secret = os.urandom(32)
    data = _export(secret, "branch office")
    assert import_exportkey(data, "branch office") == secret
    (tmp_path / "key.bin").write_bytes(data)
    assert import_exportkey(tmp_path / "key.bin", "branch office") == secret
    assert import_exportkey(str(tmp_path / "key.bin"), "branch office") == secret
    with pytest.raises(VerificationError):
        import_exportkey(data, "wrong")
    with pytest.raises(ConfigError):
        import_exportkey(tmp_path / "missing.bin", "x")
