"""Blocks a hosted cache holds without being able to verify them (BATCHED_OFFER, MS-PCHC v2).

A v2 offer names a segment by its id only: no hashes, no key. What the hosted cache pulls is
kept exactly as the offerer's MSG_BLK carried it (CryptoAlgoId, IV, ciphertext) and served
again as is; the readers decrypt with their Kp and check the hash, so a bad copy costs them a
retry elsewhere, never wrong data (docs/hosted-cache.md).

One file per block, written whole under a temporary name and renamed, so a crash leaves
either the block or nothing. The store is bounded in bytes (least recently used goes first)
and per offerer, so one offerer cannot fill it; the first copy of a block is kept.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from peerdistd.errors import LocalError

_HEAD = struct.Struct(">IB")  # CryptoAlgoId, IV length
_SUFFIX: Final = ".blk"
MAX_BLOCK_FILE: Final = 393216  # a PCCRR response's limit bounds every block


@dataclass(frozen=True, slots=True)
class OpaqueBlock:
    crypto: int
    iv: bytes
    block: bytes


class OpaqueStore:
    """Unverified encrypted blocks keyed by (segment id, index); thread-safe."""

    def __init__(self, directory: Path, limit_bytes: int, per_offerer_bytes: int) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        self.per_offerer_bytes = per_offerer_bytes
        self._lock = threading.Lock()
        self._sizes: OrderedDict[tuple[bytes, int], int] = OrderedDict()  # LRU order
        self._by_segment: dict[bytes, set[int]] = {}
        self._owner: dict[tuple[bytes, int], str] = {}
        self._by_offerer: dict[str, int] = {}
        self._used = 0

    def open(self) -> OpaqueStore:
        """Create the directory, drop leftovers of interrupted writes, index what is there."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            raise LocalError(f"cannot open {self.directory}: {exc.strerror}") from exc
        for name in names:
            path = self.directory / name
            key = _parse_name(name)
            if key is None:
                with contextlib.suppress(OSError):
                    path.unlink()  # a temporary file, or nothing of ours
                continue
            with contextlib.suppress(OSError):
                self._index(key, path.stat().st_size, "")
        self._evict(0)
        return self

    @property
    def used_bytes(self) -> int:
        return self._used

    def held_blocks(self, segment_id: bytes) -> list[int]:
        with self._lock:
            return sorted(self._by_segment.get(segment_id, ()))

    def put(self, segment_id: bytes, index: int, block: OpaqueBlock, offerer: str) -> bool:
        """Keep a block as received; False if held already or over the offerer's share."""
        size = _HEAD.size + len(block.iv) + len(block.block)
        key = (segment_id, index)
        with self._lock:
            if key in self._sizes:
                return False  # the first copy stays (a second offerer cannot replace it)
            if self._by_offerer.get(offerer, 0) + size > self.per_offerer_bytes:
                return False
            if size > self.limit_bytes or size > MAX_BLOCK_FILE:
                return False
            self._evict(size)
            path = self.directory / _name(key)
            tmp = path.with_name(f".{secrets.token_hex(6)}.tmp")
            try:
                with open(tmp, "wb") as out:
                    out.write(_HEAD.pack(block.crypto, len(block.iv)) + block.iv + block.block)
                os.replace(tmp, path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise LocalError(f"cannot store an offered block: {exc.strerror}") from exc
            self._index(key, size, offerer)
            return True

    def get(self, segment_id: bytes, index: int) -> OpaqueBlock | None:
        key = (segment_id, index)
        with self._lock:
            if key not in self._sizes:
                return None
            self._sizes.move_to_end(key)
            try:
                data = (self.directory / _name(key)).read_bytes()
            except OSError:
                self._forget(key)
                return None
        if len(data) < _HEAD.size:
            return None
        crypto, iv_size = _HEAD.unpack_from(data, 0)
        iv_end = _HEAD.size + iv_size
        if len(data) < iv_end:
            return None
        return OpaqueBlock(crypto, data[_HEAD.size : iv_end], data[iv_end:])

    def _index(self, key: tuple[bytes, int], size: int, offerer: str) -> None:
        self._sizes[key] = size
        self._by_segment.setdefault(key[0], set()).add(key[1])
        self._owner[key] = offerer
        self._by_offerer[offerer] = self._by_offerer.get(offerer, 0) + size
        self._used += size

    def _forget(self, key: tuple[bytes, int]) -> None:
        size = self._sizes.pop(key)
        self._used -= size
        held = self._by_segment[key[0]]
        held.discard(key[1])
        if not held:
            del self._by_segment[key[0]]
        owner = self._owner.pop(key)
        left = self._by_offerer[owner] - size
        if left:
            self._by_offerer[owner] = left
        else:
            del self._by_offerer[owner]

    def _evict(self, room: int) -> None:
        """Drop least recently used blocks until ``room`` more bytes fit the limit."""
        while self._sizes and self._used + room > self.limit_bytes:
            key = next(iter(self._sizes))
            with contextlib.suppress(OSError):
                (self.directory / _name(key)).unlink()
            self._forget(key)


def _name(key: tuple[bytes, int]) -> str:
    return f"{key[0].hex()}-{key[1]}{_SUFFIX}"


def _parse_name(name: str) -> tuple[bytes, int] | None:
    stem, dot, _ = name.partition(_SUFFIX)
    seg, _, index = stem.rpartition("-")
    if not dot or not name.endswith(_SUFFIX) or not index.isdigit():
        return None
    try:
        return bytes.fromhex(seg), int(index)
    except ValueError:
        return None
