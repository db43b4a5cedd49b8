"""The ``peerdist`` command line (placeholder until the subcommands land)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``peerdist``."""
    print("usage: peerdist {hash,inspect,status,publish,fetch,...}", file=sys.stderr)
    return 2
