"""``peerdist origin DIR``: serve a folder over HTTP as a BranchCache origin (MS-PCCRTP)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from peerdistd.api.client import PeerDistClient
from peerdistd.cli.failures import SOCKET_HELP, transport_reason, warn
from peerdistd.errors import ServiceUnavailable
from peerdistd.origin import DEFAULT_HASH_WAIT, running_origin

_HELP = (
    "Serve the files of DIR over HTTP GET (Range, ETag, Last-Modified). A client that sends "
    "Accept-Encoding: peerdist gets the file's content information instead, made by the "
    "local peerdistd the first time (MS-PCCRTP); if the daemon cannot help, plain bytes."
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``origin``."""
    p = subparsers.add_parser(
        "origin", help="serve a folder as a PeerDist origin", description=_HELP
    )
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument(
        "--listen",
        default="127.0.0.1:8000",
        type=_host_port,
        metavar="HOST:PORT",
        help="(port 0: any)",
    )
    p.add_argument(
        "--socket",
        metavar="PATH",
        type=Path,
        default=None,
        help=SOCKET_HELP,
    )
    p.add_argument(
        "--max-version",
        type=int,
        choices=(1, 2),
        default=2,
        help="highest content information version to hand out (default 2)",
    )
    p.add_argument(
        "--hash-wait",
        type=float,
        default=DEFAULT_HASH_WAIT,
        metavar="S",
        help="seconds a request waits for a file's first hashing before getting plain bytes",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        print(f"peerdist: error: {args.folder} is not a folder", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="peerdist origin: %(message)s")
    try:
        asyncio.run(_serve(args))
    except OSError as exc:  # the listen address, typically
        host, port = args.listen
        print(
            f"peerdist: error: cannot serve on {host}:{port}: {transport_reason(exc)}",
            file=sys.stderr,
        )
        return 1
    return 0


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    host, port = args.listen
    async with (
        PeerDistClient(args.socket) as client,
        running_origin(
            args.folder,
            client,
            host,
            port,
            offered=range(1, args.max_version + 1),
            hash_wait=args.hash_wait,
        ) as origin,
    ):
        try:
            await client.status()
        except ServiceUnavailable as exc:
            # Still serve: files go out as plain bytes until the daemon is there to hash them.
            why = exc.message.removesuffix(" — is it running?")
            warn(f"{why}; serving plain bytes only (no PeerDist) until it runs")
        print(f"serving {args.folder} at {origin.url}/ (peerdistd at {client.where})", flush=True)
        await stop.wait()
    print(origin.stats.summary(), flush=True)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host, int(port)
