"""Content and content information for daemon tests, made with the real hasher."""

from __future__ import annotations

import random

from peerdistd.proto.pccrc import ContentInformation, HashAlgorithm, server_secret_key
from peerdistd.store.hasher import StreamHasher

PASSPHRASE = b"test passphrase of the origin server"
BLOCK = 65536


def content(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def content_information(data: bytes, version: int = 1) -> ContentInformation:
    algorithm = HashAlgorithm.SHA256 if version == 1 else HashAlgorithm.TRUNCATED_SHA512
    hasher = StreamHasher(
        version=version, algorithm=algorithm, ks=server_secret_key(PASSPHRASE, version)
    )
    for i in range(0, len(data), 1 << 20):
        hasher.feed(data[i : i + (1 << 20)])
    hasher.finish()
    return hasher.content_information()
