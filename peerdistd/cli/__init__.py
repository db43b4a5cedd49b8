"""The ``peerdist`` command line.

Each module in ``COMMAND_MODULES`` adds its subcommands with ``register(subparsers)``; every
subparser sets ``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

import aiohttp

from peerdistd import __version__
from peerdistd.cli.failures import report
from peerdistd.errors import PeerDistError

COMMAND_MODULES = (
    "peerdistd.cli.hash",  # hash, inspect: no daemon needed
    "peerdistd.cli.key",  # import-key, set-key: a Windows server secret
    "peerdistd.cli.remote",  # status, publish, fetch, ...: clients of the local API
    "peerdistd.cli.origin",  # origin: an HTTP origin handing out content information (PCCRTP)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerdist", description="PeerDist (BranchCache) tools and client of peerdistd."
    )
    parser.add_argument("--version", action="version", version=f"peerdist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``peerdist``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except (PeerDistError, OSError, aiohttp.ClientError) as exc:
        # What a command did not catch itself is still said in one line, not a traceback.
        return report(exc)


if __name__ == "__main__":
    sys.exit(main())
