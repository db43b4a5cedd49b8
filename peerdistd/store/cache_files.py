"""Segment data files: one sparse file per segment, block ``i`` at ``i * block_size``.

One file per segment keeps a block at a fixed offset, so a read is one ``pread`` (or the
caller's ``sendfile``) and eviction is one ``unlink``. Files are named by the index row id in a
256-way fan-out (``data/<id & 0xff>/<id>.seg``): no byte of a segment id ever reaches a path.
They are opened with O_NOFOLLOW and must be regular files, so a symlink or device planted in
the tree is treated as a missing file and its blocks are never served.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from peerdistd.errors import LocalError

_OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
# Blocks per pwritev (512 KiB of V1 blocks). Measured with `benchmarks api`, publishing a
# whole 32 MiB V1 segment per put: one pwritev for the segment 243 MB/s, calls of 16 blocks
# 350-363, of 8 or 4 blocks 508-516, one pwrite per block 472 (1 MiB writes or more are
# slower on this path); a fetched run of 16 blocks is two calls.
WRITE_RUN_BLOCKS = 8
_SUFFIX = ".seg"

# A batch touching more files than this is made durable with one syncfs(2) of the cache's
# file system instead of one fdatasync(2) per file: a V2 content is ~16 segment files per
# MiB, and each fdatasync is a journal commit (measured on ext4 here: 500 files, 0.6-0.9 s
# one by one, 0.03-0.14 s with one syncfs). syncfs also persists the new files' directory
# entries. It reports writeback errors only since Linux 5.8 (syncfs(2), "BUGS"), so older
# kernels keep the per-file path.
SYNCFS_MIN_FILES = 8


def _load_syncfs() -> Callable[[int], int] | None:
    if platform.system() != "Linux":
        return None
    try:
        major, minor = (int(x) for x in platform.release().split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()


class SegmentFiles:
    """Paths and raw I/O of the segment files under ``root/data``."""

    def __init__(self, root: Path) -> None:
        self.data = root / "data"
        self._data = str(self.data)
        # Fan-out directories known to exist: a mkdir per new file cost about 200 us here,
        # a third of storing a V2 segment (docs/benchmarks.md, V2).
        self._dirs: set[str] = set()

    def path(self, rowid: int) -> Path:
        return Path(self._name(rowid))

    def _name(self, rowid: int) -> str:
        # A string, not a Path: joining Paths cost three parses per new V2 segment.
        return f"{self._data}/{rowid & 0xFF:02x}/{rowid:x}{_SUFFIX}"

    def open(self, rowid: int) -> int | None:
        """A new descriptor of the segment file; None if it is missing or no regular file."""
        try:
            fd = os.open(self._name(rowid), _OPEN_FLAGS)
        except OSError:  # missing, ELOOP (a symlink), EACCES...: not ours to serve
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def create(self, rowid: int) -> tuple[int, bool]:
        """A descriptor of the segment file, made if missing, and whether it was made here
        (learnt from O_EXCL rather than a stat before the open)."""
        name = self._name(rowid)
        folder = name.rpartition("/")[0]
        try:
            if folder not in self._dirs:
                os.makedirs(folder, exist_ok=True)
                self._dirs.add(folder)
            try:
                fd, created = self._open_new(name), True
            except FileNotFoundError:  # its directory went away meanwhile: make it again
                self._dirs.discard(folder)
                os.makedirs(folder, exist_ok=True)
                fd, created = self._open_new(name), True
            except FileExistsError:
                fd, created = os.open(name, _OPEN_FLAGS), False
        except OSError as exc:
            raise LocalError(f"cannot open segment file {name}: {exc}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LocalError(f"segment file {name} is not a regular file")
        return fd, created

    @staticmethod
    def _open_new(name: str) -> int:
        return os.open(name, _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)

    def write(self, fd: int, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as exc:
            raise LocalError(f"cannot write the block cache: {exc}") from exc

    def write_blocks(
        self, fd: int, block_size: int, blocks: Sequence[tuple[int, memoryview]]
    ) -> None:
        """Write blocks at ``index * block_size``: consecutive ones with one pwritev (a run
        of 16 fetched blocks was 16 pwrite calls on the event loop)."""
        run: list[memoryview] = []
        start = 0
        for index, view in sorted(blocks, key=lambda b: b[0]):
            full = len(run) >= WRITE_RUN_BLOCKS
            if run and (full or index != start + len(run) or run[-1].nbytes != block_size):
                self._write_run(fd, start * block_size, run)
                run = []
            if not run:
                start = index
            run.append(view)
        if run:
            self._write_run(fd, start * block_size, run)

    def _write_run(self, fd: int, offset: int, views: list[memoryview]) -> None:
        if len(views) == 1:
            self.write(fd, offset, views[0])
            return
        total = sum(v.nbytes for v in views)
        try:
            written = os.pwritev(fd, views, offset)
        except OSError as exc:
            raise LocalError(f"cannot write the block cache: {exc}") from exc
        if written < total:  # short (a signal, a full disk): the rest one buffer at a time
            self.write(fd, offset + written, b"".join(views)[written:])

    @staticmethod
    def read(fd: int, offset: int, length: int) -> bytes:
        """pread; short only if the file was truncated (the caller drops the block)."""
        try:
            data = os.pread(fd, length, offset)
        except OSError:
            return b""
        while 0 < len(data) < length:  # regular files return short only at EOF
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    @staticmethod
    def sync(fd: int) -> None:
        try:
            os.fdatasync(fd)
        except OSError as exc:
            raise LocalError(f"cannot sync the block cache: {exc}") from exc

    @staticmethod
    def syncs_whole_fs(files: int) -> bool:
        """Whether a batch of this many files (changed or new) is synced with one syncfs(2)."""
        return _syncfs is not None and files > SYNCFS_MIN_FILES

    def sync_batch(self, fds: Sequence[int], created: list[int]) -> None:
        """Make the data of these open files, and the names of the new ones, durable."""
        if self.syncs_whole_fs(len(fds) + len(created)):
            self.syncfs()
            return
        for fd in fds:
            self.sync(fd)
        self.sync_dirs(created)

    def syncfs(self) -> None:
        """One syncfs(2) of the file system holding the cache (data, metadata, names)."""
        assert _syncfs is not None
        try:
            fd = os.open(self.data, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise LocalError(f"cannot sync the block cache: {exc}") from exc
        try:
            if _syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise LocalError(f"cannot sync the block cache: {os.strerror(err)}")
        finally:
            os.close(fd)

    def sync_dirs(self, rowids: list[int]) -> None:
        """fsync the directories naming these (new) files, and the fan-out above them, so a
        synced file cannot lose its name in a power loss (fsync(2): the entry is separate)."""
        if not rowids:
            return
        dirs = {self.path(rowid).parent for rowid in rowids}
        for path in (*sorted(dirs), self.data):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # dropped meanwhile
            except OSError as exc:
                raise LocalError(f"cannot sync the block cache directory {path}: {exc}") from exc
            try:
                os.fsync(fd)
            except OSError as exc:
                raise LocalError(f"cannot sync the block cache directory {path}: {exc}") from exc
            finally:
                os.close(fd)

    def remove(self, rowid: int) -> None:
        try:
            self.path(rowid).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LocalError(f"cannot remove {self.path(rowid)}: {exc}") from exc

    def wipe(self) -> None:
        """Remove every data file (the index that described them is gone)."""
        self._dirs.clear()
        shutil.rmtree(self.data, ignore_errors=True)

    def rowids_on_disk(self) -> Iterator[tuple[int, Path]]:
        """(rowid, path) of every entry in the fan-out; unparsable names get rowid -1."""
        if not self.data.is_dir():
            return
        for bucket in self.data.iterdir():
            if not bucket.is_dir() or bucket.is_symlink():
                yield -1, bucket
                continue
            for entry in bucket.iterdir():
                name = entry.name
                try:
                    rowid = int(name.removesuffix(_SUFFIX), 16) if name.endswith(_SUFFIX) else -1
                except ValueError:
                    rowid = -1
                yield (rowid if entry == self.path(rowid) else -1), entry
