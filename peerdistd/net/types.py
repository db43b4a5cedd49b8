"""Seams of the net layer: how it meets the store, and the errors peers cause.

The store satisfies :class:`BlockSource` structurally (net never imports store); the type
lives with the sans-IO server in ``proto`` and is re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from peerdistd.errors import RemoteError
from peerdistd.proto.pccrr_server import BlockSource

__all__ = [
    "BUSY_HEADER",
    "BlockSource",
    "PeerBusy",
    "PeerError",
    "PeerProtocolError",
    "PeerSlow",
    "PeerTimeout",
    "PeerUnreachable",
    "Progress",
]

# An HTTP header our server adds to the empty MSG_BLK / MSG_BLKLIST it sends when busy, so a
# peerdistd client can tell "busy" from "don't have" ([MS-PCCRR] 3.2.5.3 makes them the same
# message). Other clients ignore it.
BUSY_HEADER: Final = "X-PeerDist-Busy"


class PeerError(RemoteError):
    """A peer did not give us what we asked for; ``peer`` is its ``ip:port``."""

    def __init__(self, peer: str, message: str) -> None:
        self.peer = peer
        self.message = message
        super().__init__(f"peer {peer}: {message}")


class PeerBusy(PeerError):
    """The peer is at its upload limit (an empty answer marked busy); try another or later."""


class PeerTimeout(PeerError):
    """No complete answer within the request timer ([MS-PCCRR] 3.1.2, 2 s by default)."""


class PeerSlow(PeerTimeout):
    """The answer did not come at the floor rate (``peers.min_transfer_rate``): a trickling peer."""


class PeerUnreachable(PeerError):
    """No connection could be made or kept (refused, reset, closed early)."""


class PeerProtocolError(PeerError):
    """A malformed answer, an HTTP error, or an answer that does not match the request."""


@dataclass(slots=True)
class Progress:
    """How far one request got, for whoever races it against others: ``sent_at`` is the loop
    time its bytes were handed to a connection (None while it waits for one)."""

    sent_at: float | None = None
