"""``peerdist import-key`` and ``peerdist set-key``: share a Windows server's BranchCache secret.

With the secret of ``netsh branchcache exportkey``, or the passphrase given to ``netsh
branchcache set key passphrase=``, content published here gets the same segment ids as on
that Windows server ([MS-PCCRC] 2.5), so Linux and Windows publishers of the same bytes feed
one branch cache.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

from peerdistd.cli.failures import report
from peerdistd.cli.hash import node_secret_path
from peerdistd.errors import PeerDistError
from peerdistd.proto.exportkey import passphrase_secret
from peerdistd.store.secret import import_exportkey, store_secret

_HELP = (
    "Take over a Windows server's BranchCache secret. With the secret that 'netsh branchcache "
    "exportkey' wrote, content published here gets the same segment ids as on that Windows "
    "server, so Linux and Windows publishers of the same bytes feed one branch cache."
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``import-key`` and ``set-key``."""
    p = subparsers.add_parser(
        "import-key",
        help="use a Windows server's exported BranchCache key as this node's secret",
        description=_HELP,
    )
    p.add_argument("file", type=Path, metavar="FILE", help="file from netsh branchcache exportkey")
    p.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="P",
        help="file holding the export passphrase (default: ask on the terminal; without one, "
        "the first line of standard input)",
    )
    p.add_argument(
        "--secret-file", type=Path, metavar="OUT", help="where to store it (default: the node's)"
    )
    p.set_defaults(func=run_import_key)

    p = subparsers.add_parser(
        "set-key",
        help="derive this node's secret from a passphrase, as netsh branchcache set key does",
        description="Make the server secret from a passphrase exactly as "
        "'netsh branchcache set key passphrase=TEXT' does on Windows (the UTF-16LE text), "
        "so content servers given the same passphrase produce the same segment ids.",
    )
    p.add_argument("--passphrase-file", type=Path, metavar="P", help="file holding the passphrase")
    p.add_argument(
        "--secret-file", type=Path, metavar="OUT", help="where to store it (default: the node's)"
    )
    p.set_defaults(func=run_set_key)


def run_import_key(args: argparse.Namespace) -> int:
    try:
        if args.passphrase_file is not None:
            passphrase = args.passphrase_file.read_text("utf-8").rstrip("\r\n")
        else:
            passphrase = _ask_passphrase()
        secret = import_exportkey(args.file, passphrase)
        target = args.secret_file or node_secret_path()
        store_secret(target, secret)
    except (PeerDistError, OSError, UnicodeDecodeError) as exc:
        return report(exc)
    except EOFError:
        print(
            "peerdist: error: no export passphrase: there is no terminal to ask on and "
            "standard input is empty; give it with --passphrase-file FILE",
            file=sys.stderr,
        )
        return 1
    print(f"imported the server secret into {target}; restart peerdistd to use it")
    return 0


def run_set_key(args: argparse.Namespace) -> int:
    try:
        if args.passphrase_file is not None:
            passphrase = args.passphrase_file.read_text("utf-8").rstrip("\r\n")
        else:
            passphrase = _ask_passphrase("passphrase: ")
        target = args.secret_file or node_secret_path()
        store_secret(target, passphrase_secret(passphrase))
    except (PeerDistError, OSError, UnicodeDecodeError) as exc:
        return report(exc)
    except EOFError:
        print(
            "peerdist: error: no passphrase: there is no terminal to ask on and standard "
            "input is empty; give it with --passphrase-file FILE",
            file=sys.stderr,
        )
        return 1
    print(f"set the server secret in {target}; restart peerdistd to use it")
    return 0


def _ask_passphrase(prompt: str = "export passphrase: ") -> str:
    """Ask on the terminal; with none, the first line of standard input (EOFError if empty)."""
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:  # no controlling terminal: a pipe or a service, not a person
        line = sys.stdin.readline()
        if not line:
            raise EOFError from None
        return line.rstrip("\r\n")
    return getpass.getpass(prompt)
