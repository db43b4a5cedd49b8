"""The one exception tree of peerdistd.

Every error the package raises derives from :class:`PeerDistError`. Errors caused by bytes
from elsewhere (peers, the LAN, files, API bodies) derive from :class:`RemoteError` and carry
structured fields; the API maps each :class:`ApiError` subclass to exactly one error NAME and
one HTTP status (DESIGN.md, "The local API").
"""

from __future__ import annotations

from typing import Any, ClassVar


class PeerDistError(Exception):
    """Root of every exception peerdistd raises."""


class LocalError(PeerDistError):
    """Our own fault or our own environment's (disk, configuration)."""


class RemoteError(PeerDistError):
    """Input from elsewhere was bad: a peer, a packet, a file, an API body."""


class DecodeError(RemoteError, ValueError):
    """Bytes that do not parse. ``offset`` is where in the input the problem was found."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        self.message = message
        self.offset = offset
        super().__init__(message if offset is None else f"{message} (at byte {offset})")


class VerificationError(RemoteError):
    """Data whose hash does not match its content information."""


class PeerUnavailable(RemoteError):
    """Peers hold the data but none delivered it before the deadline."""


class PeersBusy(PeerUnavailable):
    """Every peer asked for a block answered busy: it is at its upload limit ([MS-PCCRR]
    3.2.5.3). Asking again is the caller's flow-control window's decision; ``peers`` names
    the busy holders, the ones whose slot is worth waiting for (a holder that lacks the
    block may have free slots and still cannot serve it)."""

    def __init__(self, message: str, peers: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.peers = peers


class StoreDamaged(LocalError):
    """A store's SQLite file is damaged (not just busy or unreadable): it gets set aside and
    rebuilt from what can be proven (see peerdistd.store.healing)."""


class ConfigError(LocalError):
    """An invalid configuration value; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        super().__init__(f"{key}: {message}")


class ApiError(PeerDistError):
    """An error with a PeerDist NAME and one HTTP status (DESIGN.md, "The local API")."""

    name: ClassVar[str] = "SERVICE_UNAVAILABLE"
    status: ClassVar[int] = 503

    def __init__(self, message: str = "") -> None:
        self.message = message or self.name
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        return {"error": self.name, "message": self.message}


class InvalidParameter(ApiError):
    name = "INVALID_PARAMETER"
    status = 400


class InvalidHandle(ApiError):
    name = "INVALID_HANDLE"
    status = 404


class AccessDenied(ApiError):
    name = "ACCESS_DENIED"
    status = 403


class NotSupported(ApiError):
    """The call is disabled by policy (``enabled = false``)."""

    name = "NOT_SUPPORTED"
    status = 501


class ServiceUnavailable(ApiError):
    name = "SERVICE_UNAVAILABLE"
    status = 503


class NoMore(ApiError):
    """The read offset is at or past the end of the content (or of its range)."""

    name = "NO_MORE"
    status = 416


class InvalidData(ApiError):
    """Added data (or content information) failed verification or parsing."""

    name = "INVALID_DATA"
    status = 422


class StreamLimitReached(ApiError):
    name = "STREAM_LIMIT_REACHED"
    status = 429


class OperationAborted(ApiError):
    """The handle was closed while the operation was pending."""

    name = "OPERATION_ABORTED"
    status = 410


class _RangeError(ApiError):
    """An error that names the range the application must get from the origin."""

    def __init__(self, offset: int, length: int, message: str = "") -> None:
        self.offset = offset
        self.length = length
        super().__init__(message or f"{self.name}: offset {offset}, length {length}")

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "offset": self.offset, "length": self.length}


class MissingData(_RangeError):
    """No local copy and no peer has it: fetch ``[offset, offset+length)`` from the origin."""

    name = "MISSING_DATA"
    status = 424


class Timeout(_RangeError):
    """The timeout expired while peers were still being asked."""

    name = "TIMEOUT"
    status = 504


API_ERRORS: dict[str, type[ApiError]] = {
    cls.name: cls
    for cls in (
        InvalidParameter,
        InvalidHandle,
        AccessDenied,
        NotSupported,
        ServiceUnavailable,
        MissingData,
        Timeout,
        NoMore,
        InvalidData,
        StreamLimitReached,
        OperationAborted,
    )
}


class TransferInterrupted(RemoteError):
    """A transfer from elsewhere (an origin) stopped part-way; asking again may succeed."""
