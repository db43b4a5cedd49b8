"""Logging: one line per event, as journald-friendly text or as JSON, and rate-limited logging
of errors that other machines cause (STYLE.md principle 5: log once, then quietly).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from peerdistd.errors import ConfigError

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# sd-daemon(3): "<N>" line prefixes that journald turns into the syslog priority.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Fields given with ``extra=``: whatever a bare LogRecord does not have."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``[ts] LEVEL logger: msg key=value`` on one line; under journald ``<N>logger: msg``."""

    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        extras = " ".join(f"{k}={v!r}" for k, v in _extras(record).items())
        text = f"{text} {extras}" if extras else text
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        text = text.replace("\\", "\\\\").replace("\n", "\\n")  # one line per event
        if self.journal:  # journald adds the time, the unit and the pid itself
            priority = _PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 7)
            return f"<{priority}>{record.name}: {text}"
        return f"{_timestamp(record)} {record.levelname} {record.name}: {text}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, the ``extra=`` fields, exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        event.update((k, v) for k, v in _extras(record).items() if k not in event)
        if record.exc_info:
            event["exc"] = self.formatException(record.exc_info)
        return json.dumps(event, default=str, ensure_ascii=False)


def is_journal(stream: TextIO, env: Mapping[str, str]) -> bool:
    """Whether ``stream`` goes to journald: ``$JOURNAL_STREAM`` is set and names its fd."""
    expected = env.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return True  # not a real file: trust the variable
    # systemd.exec(5): JOURNAL_STREAM is "device:inode" of the stream connected to journald.
    return expected == f"{info.st_dev}:{info.st_ino}"


class _OurHandler(logging.StreamHandler[TextIO]):
    """Marks the handler setup_logging() installed, so that calling it again replaces it."""


def setup_logging(
    level: str, fmt: str, stream: TextIO | None = None, env: Mapping[str, str] | None = None
) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) as ``fmt`` ("text"|"json") lines."""
    if level not in LEVELS:
        raise ConfigError("daemon.log_level", f"must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in ("text", "json"):
        raise ConfigError("daemon.log_format", f"must be one of text, json, got {fmt!r}")
    stream = sys.stderr if stream is None else stream
    env = os.environ if env is None else env
    handler = _OurHandler(stream)
    handler.setFormatter(
        JsonFormatter() if fmt == "json" else TextFormatter(journal=is_journal(stream, env))
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    return handler


class RateLimitedLogger:
    """Logs each key's first event per ``interval`` seconds; repeats go to DEBUG and are counted.

    For errors caused by remote input (bad packets, bad blocks), keyed e.g. by (peer, kind) so
    a hostile peer cannot flood the log. The key table is bounded by ``max_keys``.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self.suppressed_total = 0
        self._clock = clock
        self._keys: dict[Hashable, tuple[float, int]] = {}  # key -> (last logged, suppressed)

    def log(self, level: int, key: Hashable, msg: str, *args: object, **kwargs: Any) -> bool:
        """Log ``msg`` at ``level`` unless ``key`` was logged within the interval; True if so."""
        now = self._clock()
        last, suppressed = self._keys.get(key, (None, 0))
        if last is not None and now - last < self.interval:
            self._keys[key] = (last, suppressed + 1)
            self.suppressed_total += 1
            self.logger.log(logging.DEBUG, msg, *args, **kwargs)
            return False
        if suppressed:
            msg = f"{msg} ({suppressed} more like this since the last report)"
        self._keys.pop(key, None)
        if len(self._keys) >= self.max_keys:
            del self._keys[next(iter(self._keys))]  # forget the least recently logged key
        self._keys[key] = (now, 0)
        self.logger.log(level, msg, *args, **kwargs)
        return True

    def warning(self, key: Hashable, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.WARNING, key, msg, *args, **kwargs)

    def error(self, key: Hashable, msg: str, *args: object, **kwargs: Any) -> bool:
        return self.log(logging.ERROR, key, msg, *args, **kwargs)
