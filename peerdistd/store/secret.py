"""The node's server secret on disk (PROTOCOLS.md 1.2): 32 random bytes, mode 0600.

The file holds the server passphrase; Ks for each content-information version is derived
from it with ``peerdistd.proto.pccrc.server_secret_key``. A secret taken from Windows (an
export file, or a ``netsh branchcache set key passphrase=`` text) may have another length,
so any length from 1 to MAX_SECRET_SIZE bytes is accepted.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from peerdistd.errors import ConfigError
from peerdistd.proto.exportkey import MAX_EXPORT_SIZE, decrypt_exportkey

SECRET_SIZE = 32  # what a new node makes
MAX_SECRET_SIZE = 4096  # a passphrase of 1024 UTF-16 characters needs at most this
SECRET_FILE = "server-secret"  # noqa: S105 - a file name, not a secret
_KEY = "server_secret"


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret, creating it (atomically, 0600) at first use; ConfigError if unsafe."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileExistsError):  # another process won the race: use theirs
        store_secret(path, secrets.token_bytes(SECRET_SIZE), replace=False)
    try:
        return _read(path)
    except FileNotFoundError as exc:
        raise ConfigError(_KEY, f"{path} vanished right after it was created") from exc


def store_secret(path: Path, secret: bytes, *, replace: bool = True) -> None:
    """Write ``secret`` to ``path`` with mode 0600, all or nothing (temp file, fsync, link)."""
    if not 1 <= len(secret) <= MAX_SECRET_SIZE:
        raise ConfigError(
            _KEY, f"a server secret is 1 to {MAX_SECRET_SIZE} bytes, not {len(secret)}"
        )
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secret)
                out.flush()
                os.fsync(out.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails with FileExistsError instead of overwriting
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise
    except OSError as exc:
        raise ConfigError(_KEY, f"cannot write {path}: {exc.strerror or exc}") from exc


def _read(path: Path) -> bytes:
    """The secret's bytes; FileNotFoundError passes through, anything else is ConfigError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(_KEY, f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConfigError(_KEY, f"{path} is not a regular file")
        if mode & 0o077:
            raise ConfigError(
                _KEY,
                f"{path} is accessible by group or others (mode {mode & 0o777:o}); chmod 600 it",
            )
        data = os.read(fd, MAX_SECRET_SIZE + 1)
    finally:
        os.close(fd)
    if not 1 <= len(data) <= MAX_SECRET_SIZE:
        raise ConfigError(_KEY, f"{path} holds {len(data)} bytes, not 1 to {MAX_SECRET_SIZE}")
    return data


def import_exportkey(source: Path | str | bytes, passphrase: str) -> bytes:
    """The server secret from a ``netsh branchcache exportkey`` file (path or its bytes)."""
    if isinstance(source, bytes):
        data = source
    else:
        try:
            with open(source, "rb") as f:
                data = f.read(MAX_EXPORT_SIZE + 1)
        except OSError as exc:
            raise ConfigError(_KEY, f"cannot read {source}: {exc.strerror or exc}") from exc
    return decrypt_exportkey(data, passphrase)
