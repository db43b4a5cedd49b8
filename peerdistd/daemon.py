"""Composition root of the daemon (placeholder until the daemon lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``peerdistd``."""
    print("usage: peerdistd serve", file=sys.stderr)
    return 2
