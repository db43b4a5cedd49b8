"""Subcommands that use a running peerdistd through its local API (status, publish, fetch, ...).

The fetch loop itself is :func:`peerdistd.cli.fetching.fetch`; getting its content
information from the origin over HTTP is :func:`peerdistd.cli.pccrtp_client.fetch_url` (both
re-exported here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console

from peerdistd.api.client import PeerDistClient
from peerdistd.api.fetch_loop import DEFAULT_WORKERS
from peerdistd.cli.failures import SOCKET_HELP, report, warn
from peerdistd.cli.fetching import FetchSummary, fetch, origin_range
from peerdistd.cli.pccrtp_client import fetch_url, plain_download
from peerdistd.cli.progress import (
    cache_table,
    human_bytes,
    peers_table,
    progress_bar,
    status_view,
)
from peerdistd.config import load_config
from peerdistd.errors import ConfigError, InvalidParameter, PeerDistError, ServiceUnavailable
from peerdistd.proto.pccrtp import ProtocolVersion

__all__ = ["FetchSummary", "fetch", "fetch_url", "origin_range", "register", "run"]

Command = Callable[[PeerDistClient, argparse.Namespace], Awaitable[int]]


# --- the subcommands -------------------------------------------------------------------------


def _stderr() -> Console:
    return Console(stderr=True)


async def _status(client: PeerDistClient, args: argparse.Namespace) -> int:
    status = await client.status()
    if args.json:
        print(json.dumps(dataclasses.asdict(status), indent=2, sort_keys=True))
    else:
        Console().print(status_view(status))
    return 0


_STDIN_CHUNK = 4 << 20


async def _stdin_chunks() -> AsyncIterator[bytes]:
    """Standard input a chunk at a time, off the event loop: a pipe is never held whole."""
    while chunk := await asyncio.to_thread(sys.stdin.buffer.read, _STDIN_CHUNK):
        yield chunk


async def _publish(client: PeerDistClient, args: argparse.Namespace) -> int:
    # "-" is standard input; a path may be a pipe too (<(cmd)): both are streamed.
    body = _stdin_chunks() if str(args.file) == "-" else args.file
    pub = await client.publish(body, id=args.id, version=args.version, hash=args.hash, uid=args.uid)
    if args.content_info is not None:
        _write_file(args.content_info, await client.content_information(pub.id, uid=args.uid))
    print(
        f"published {pub.id}: {pub.size} bytes, content information V{pub.version} "
        f"({pub.algorithm}), {pub.segments} segments"
    )
    return 0


async def _content_info(client: PeerDistClient, args: argparse.Namespace) -> int:
    if (args.offset is None) != (args.length is None):
        print("peerdist: error: give both --offset and --length, or neither", file=sys.stderr)
        return 2
    try:
        info = await client.content_information(
            args.id, offset=args.offset, length=args.length, version=args.version, uid=args.uid
        )
    except InvalidParameter:
        pub = None if args.version is None else await client.publication(args.id, uid=args.uid)
        if pub is None or pub.version == args.version:
            raise
        # The daemon hands out only the version a publication was made with; say how to get
        # the other one in this command's terms, not the API's.
        print(
            f"peerdist: error: {args.id!r} was published with content information "
            f"V{pub.version}; for V{args.version}, publish it again: "
            f"peerdist publish FILE --id {args.id} --version {args.version}",
            file=sys.stderr,
        )
        return 1
    _write_file(args.output, info)
    return 0


async def _unpublish(client: PeerDistClient, args: argparse.Namespace) -> int:
    await client.unpublish(args.id, uid=args.uid)
    return 0


async def _fetch(client: PeerDistClient, args: argparse.Namespace) -> int:
    origin = args.url or args.origin
    content_information = None
    if args.content_info is not None:
        content_information = await asyncio.to_thread(args.content_info.read_bytes)
    err = _stderr()
    to_stdout = str(args.output) == "-"
    workers = args.workers or _default_workers()
    # Written beside OUT and renamed when complete, so OUT is never a partial file.
    part = args.output.with_name(args.output.name + ".part")
    out = sys.stdout.buffer if to_stdout else await asyncio.to_thread(part.open, "wb")
    try:
        if (why := await _unreachable(client)) is not None:  # said before the bar is drawn
            warn(f"{why}; downloading {origin} directly, without peers or cache")
        with (
            progress_bar(err, "fetch") if err.is_terminal else contextlib.nullcontext() as progress
        ):
            if why is not None:
                summary = await plain_download(
                    origin, out, note="peerdistd was not reachable", progress=progress
                )
            elif content_information is None:  # ask the origin for it (MS-PCCRTP)
                summary = await fetch_url(
                    client,
                    origin,
                    out,
                    version={v.text: v for v in ProtocolVersion}[args.peerdist_version],
                    timeout_ms=args.timeout_ms,
                    progress=progress,
                    workers=workers,
                )
            else:
                summary = await fetch(
                    client,
                    content_information,
                    origin,
                    out,
                    timeout_ms=args.timeout_ms,
                    progress=progress,
                    workers=workers,
                )
        out.flush()
        if not to_stdout:
            out.close()
            os.replace(part, args.output)
    finally:
        if not to_stdout:
            out.close()
            part.unlink(missing_ok=True)
    print(_fetch_report(summary), file=sys.stderr if to_stdout else sys.stdout)
    return 0


async def _unreachable(client: PeerDistClient) -> str | None:
    """Why the daemon cannot be reached (not running, no access), or None if it answers."""
    try:
        await client.status()
    except ServiceUnavailable as exc:
        if isinstance(exc.__cause__, aiohttp.ClientError | OSError):
            return exc.message.removesuffix(" — is it running?")
        raise
    return None


def _fetch_report(s: FetchSummary) -> str:
    rate = human_bytes(s.size / s.seconds) + "/s" if s.seconds > 0 else "-"
    head = f"fetched {human_bytes(s.size)} in {s.seconds:.2f} s ({rate}): "
    if not s.peerdist:
        return head + f"all from origin, plain HTTP: {s.note}; nothing to share with peers"
    via = (
        f"; content information ({human_bytes(s.content_info_bytes)}) from the origin"
        if s.content_info_bytes
        else ""
    )
    return head + (
        f"{human_bytes(s.from_cache)} from cache, {human_bytes(s.from_peers)} from peers, "
        f"{human_bytes(s.from_origin)} from origin "
        f"({s.origin_requests} range request{'' if s.origin_requests == 1 else 's'}){via}"
    )


async def _cache_verify(client: PeerDistClient) -> int:
    """``peerdist cache verify``: exit status 1 when damaged blocks were found (and dropped)."""
    r = await client.verify_cache()
    print(
        f"checked {r.blocks} blocks in {r.segments} segments: {r.bad_blocks} bad"
        f" ({human_bytes(r.bytes_dropped)} dropped), {r.orphan_files} stray files removed"
    )
    return 1 if r.bad_blocks else 0


async def _cache(client: PeerDistClient, args: argparse.Namespace) -> int:
    if args.action == "verify":
        return await _cache_verify(client)
    if args.flush:
        freed, kept = await client.flush_cache_report(args.include_publications)
        note = f"; kept {human_bytes(kept)} for publications" if kept else ""
        print(f"freed {human_bytes(freed)}{note}")
    else:
        Console().print(cache_table(await client.cache()))
    return 0


async def _peers(client: PeerDistClient, args: argparse.Namespace) -> int:
    Console().print(peers_table(await client.peers()))
    return 0


def _write_file(path: Path, data: bytes) -> None:
    if str(path) == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        path.write_bytes(data)


# SIGTERM and SIGHUP end a command the way Ctrl-C does: cancelled, its clean-up run (a
# fetch removes OUT.part), exit 128 + the signal's number as a shell reports it.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def run(command: Command, args: argparse.Namespace) -> int:
    """Run one subcommand against the daemon; errors become one line and exit 1."""
    stopped_by: list[int] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(sig: int) -> None:
            stopped_by.append(sig)
            task.cancel()

        # Signals reach the main thread only (main() may run in another, from a program).
        # A signal already ignored stays ignored: `nohup peerdist fetch ...` outlives its terminal.
        main_thread = threading.current_thread() is threading.main_thread()
        signals = [
            s for s in _STOP_SIGNALS if main_thread and signal.getsignal(s) != signal.SIG_IGN
        ]
        for sig in signals:
            loop.add_signal_handler(sig, stop, sig)
        try:
            async with PeerDistClient(args.socket) as client:
                return await command(client, args)
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if not stopped_by:
            raise
        return 128 + stopped_by[0]
    except (PeerDistError, OSError, aiohttp.ClientError) as exc:
        return report(exc)


def _add(
    subparsers: argparse._SubParsersAction[Any],
    parent: argparse.ArgumentParser,
    name: str,
    command: Command,
    help: str,
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name, parents=[parent], help=help, description=help
    )
    parser.set_defaults(func=lambda args: run(command, args))
    return parser


def _uid_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--uid",
        type=_natural,
        metavar="UID",
        help="root: the publication of this uid (ids are per uid; default: your own)",
    )


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket",
        metavar="PATH",
        type=Path,
        default=None,
        help=SOCKET_HELP,
    )
    p = _add(subparsers, common, "status", _status, "show the daemon's state, cache and peers")
    p.add_argument("--json", action="store_true", help="print the status as JSON")

    p = _add(subparsers, common, "publish", _publish, "publish a file for peers to share")
    p.add_argument(
        "file", type=Path, metavar="FILE", help="the content: a file, a pipe, or - for stdin"
    )
    p.add_argument("--id", help="content id (default: one is assigned)")
    p.add_argument("--version", type=int, choices=(1, 2), default=1)
    p.add_argument("--hash", choices=("sha256", "sha384", "sha512"), default="sha256")
    p.add_argument("--content-info", type=Path, metavar="OUT", help="also write its content info")
    _uid_option(p)

    p = _add(subparsers, common, "content-info", _content_info, "get a publication's content info")
    p.add_argument("id", metavar="ID")
    p.add_argument("--offset", type=_natural, help="range start (with --length)")
    p.add_argument("--length", type=_natural, help="range length (with --offset)")
    p.add_argument("--version", type=int, choices=(1, 2), help="default: the publication's")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="'-': stdout")
    _uid_option(p)

    p = _add(subparsers, common, "unpublish", _unpublish, "withdraw a publication")
    p.add_argument("id", metavar="ID")
    _uid_option(p)

    p = _add(subparsers, common, "fetch", _fetch, "get content through peers, else the origin")
    p.epilog = _FETCH_EPILOG
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("url", nargs="?", metavar="URL", type=_http_url, help="the origin's URL")
    where.add_argument("--origin", metavar="URL", type=_http_url, help="the same, as an option")
    p.add_argument(
        "--content-info",
        type=Path,
        metavar="F",
        help="content information to use (default: ask the origin, MS-PCCRTP)",
    )
    p.add_argument(
        "--peerdist-version",
        choices=("1.0", "1.1"),
        default="1.1",
        help="X-P2P-PeerDist version to speak to the origin (1.0: V1 content information only)",
    )
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="'-': stdout")
    p.add_argument("--timeout-ms", type=_natural, metavar="N", help="peer timeout (default 5000)")
    p.add_argument(
        "--workers",
        type=_workers,
        metavar="N",
        help="pieces read and fetched from the origin at once (default: peers.fetch_workers, 4)",
    )

    p = _add(subparsers, common, "cache", _cache, "show the block cache's use")
    p.add_argument(
        "action",
        nargs="?",
        choices=("verify",),
        help="verify: re-hash every cached block now, drop and report those that fail (root)",
    )
    p.add_argument("--flush", action="store_true", help="empty the block cache (root only)")
    p.add_argument(
        "--include-publications",
        action="store_true",
        help="with --flush: drop publications' blocks too (kept by default)",
    )

    _add(subparsers, common, "peers", _peers, "list the peers known")


def _workers(text: str) -> int:
    value = _natural(text)
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError(f"must be 1..64: {text!r}")
    return value


def _default_workers() -> int:
    """``peers.fetch_workers`` of the configuration this user's daemon would read, else 4."""
    try:
        return load_config().peers.fetch_workers
    except ConfigError:
        return DEFAULT_WORKERS


_FETCH_EPILOG = (
    "OUT is written as OUT.part and renamed when complete. A fetch that fails or is "
    "interrupted (Ctrl-C, SIGTERM) removes OUT.part; what it got is in peerdistd's cache, so "
    "running it again continues from there at local speed. A range the origin cuts short is "
    "asked again (3 times, with backoff). If peerdistd is not reachable, the URL is "
    "downloaded directly from the origin, with a warning."
)


def _natural(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a non-negative integer: {text!r}")
    return value


def _http_url(text: str) -> str:
    if not re.match(r"https?://[^/\s]+", text):
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {text!r}")
    return text
