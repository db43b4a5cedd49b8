"""``peerdist hash`` and ``peerdist inspect``: content information without a daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, BinaryIO

from peerdistd.config import load_config
from peerdistd.errors import ConfigError, PeerDistError
from peerdistd.paths import default_paths
from peerdistd.proto.pccrc import ContentInformation, HashAlgorithm, server_secret_key
from peerdistd.store.hasher import StreamHasher, check_algorithm, hash_file
from peerdistd.store.secret import load_or_create_secret

MAX_PASSPHRASE = 1024 * 1024
MAX_CONTENT_INFORMATION = 1 << 30
_STDIN_READ = 1024 * 1024


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``hash`` and ``inspect``."""
    p = subparsers.add_parser(
        "hash", help="write the content information of a file", description=_HASH_HELP
    )
    p.add_argument("file", metavar="FILE", help="the content; - for standard input")
    p.add_argument(
        "-o", "--output", metavar="OUT", required=True, help="where to write; - for stdout"
    )
    p.add_argument(
        "--version", type=int, choices=(1, 2), default=1, help="content information version"
    )
    p.add_argument(
        "--hash", choices=("sha256", "sha384", "sha512"), help="V1 hash (default sha256)"
    )
    p.add_argument(
        "--secret", metavar="PASSFILE", type=Path, help="file holding the server passphrase"
    )
    p.add_argument("--offset", type=_non_negative, help="start of the range (default 0)")
    p.add_argument("--length", type=_non_negative, help="length of the range (default: to the end)")
    p.set_defaults(func=run_hash)

    p = subparsers.add_parser("inspect", help="print content information as JSON")
    p.add_argument("file", metavar="FILE", help="content information; - for standard input")
    p.set_defaults(func=run_inspect)


_HASH_HELP = (
    "Hash FILE into MS-PCCRC content information. Keys derive from the passphrase in "
    "--secret, or else from this node's own server secret "
    "(content.secret_file, by default <state dir>/server-secret, created at first use)."
)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def run_hash(args: argparse.Namespace) -> int:
    try:
        if args.version == 2 and args.hash is not None:
            raise _Fail("--hash applies to version 1 only (V2 is truncated SHA-512)")
        algorithm = check_algorithm(args.version, HashAlgorithm.from_name(args.hash or "sha256"))
        ks = server_secret_key(_passphrase(args.secret), args.version)
        if args.file == "-":
            info = _hash_stream(sys.stdin.buffer, args, algorithm, ks)
        else:
            info = hash_file(
                args.file,
                version=args.version,
                algorithm=algorithm,
                ks=ks,
                offset=args.offset,
                length=args.length,
            )
        data = info.to_bytes()
        _write(args.output, data)
    except (PeerDistError, OSError, _Fail) as exc:
        return _error(exc)
    # What was written, on stderr when the content information itself went to stdout.
    where = "standard output" if args.output == "-" else args.output
    print(
        f"wrote {where}: content information V{info.version} ({info.algorithm.label}), "
        f"{len(data)} bytes, {len(info.segments)} segments, for {info.length} bytes of content "
        f"from offset {info.start}",
        file=sys.stderr if args.output == "-" else sys.stdout,
    )
    return 0


def node_secret_path() -> Path:
    """The secret this user's daemon publishes with (its configuration, else defaults)."""
    try:
        return load_config().paths.secret_file
    except ConfigError:
        return default_paths().secret_file


def _passphrase(path: Path | None) -> bytes:
    if path is None:
        return load_or_create_secret(node_secret_path())
    with path.open("rb") as f:
        data = f.read(MAX_PASSPHRASE + 1)
    if not data or len(data) > MAX_PASSPHRASE:
        raise _Fail(f"{path}: a passphrase file holds 1 to {MAX_PASSPHRASE} bytes")
    return data


def _hash_stream(
    stream: BinaryIO, args: argparse.Namespace, algorithm: HashAlgorithm, ks: bytes
) -> ContentInformation:
    hasher = StreamHasher(version=args.version, algorithm=algorithm, ks=ks)
    while chunk := stream.read(_STDIN_READ):
        hasher.feed(chunk)  # the bytes themselves are not kept: only the hashes
    hasher.finish()
    info = hasher.content_information()
    if args.offset is None and args.length is None:
        return info
    offset = args.offset or 0
    length = info.end - offset if args.length is None else args.length
    return info.sub_range(offset, length)


def _write(output: str, data: bytes) -> None:
    if output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    tmp = f"{output}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_inspect(args: argparse.Namespace) -> int:
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read(MAX_CONTENT_INFORMATION + 1)
        else:
            with open(args.file, "rb") as f:
                data = f.read(MAX_CONTENT_INFORMATION + 1)
        if len(data) > MAX_CONTENT_INFORMATION:
            raise _Fail("content information larger than 1 GiB")
        info = ContentInformation.parse(data)
    except (PeerDistError, OSError, _Fail) as exc:
        return _error(exc)
    json.dump(describe(info), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def describe(info: ContentInformation) -> dict[str, Any]:
    """Content information as plain JSON-able data (hex for bytes)."""
    return {
        "version": info.version,
        "algorithm": info.algorithm.label,
        "range": {"start": info.start, "end": info.end, "length": info.length},
        "segments": [
            {
                "index": s.index,
                "offset": s.offset,
                "length": s.length,
                "block_size": s.block_size,
                "block_count": s.block_count,
                "hod": s.hod.hex(),
                "kp": s.secret.hex(),
                "segment_id": s.segment_id.hex(),
                "block_hashes": [h.hex() for h in s.block_hashes],
            }
            for s in info.segments
        ],
    }


class _Fail(Exception):
    """A usage problem found after argument parsing; reported like any other error."""


def _error(exc: BaseException) -> int:
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        message = f"{where}{exc.strerror or exc}"
    else:
        message = str(exc)
    print(f"peerdist: error: {message}", file=sys.stderr)
    return 1
