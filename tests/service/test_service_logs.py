"""peerdistd.logs: text and JSON lines, journald mode, rate-limited remote errors."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest

from peerdistd.errors import ConfigError
from peerdistd.logs import RateLimitedLogger, is_journal, setup_logging

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_lines_have_time_level_logger_and_extras() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out, env={})
    log = logging.getLogger("peerdistd.net.discovery")
    log.info("probe from %s", "192.0.2.7", extra={"segments": 3})
    log.debug("not shown at info")
    [line] = lines(out)
    assert re.fullmatch(
        TS + r" INFO peerdistd\.net\.discovery: probe from 192\.0\.2\.7 segments=3", line
    )


def test_journal_text_has_priorities_and_no_timestamps() -> None:
    out = io.StringIO()
    setup_logging("debug", "text", stream=out, env={"JOURNAL_STREAM": "8:1234"})
    log = logging.getLogger("peerdistd.x")
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log.log(level, "event")
    assert lines(out) == [
        "<7>peerdistd.x: event",
        "<6>peerdistd.x: event",
        "<4>peerdistd.x: event",
        "<3>peerdistd.x: event",
        "<2>peerdistd.x: event",
    ]


def test_one_line_per_event_even_with_a_traceback() -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out, env={})
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("peerdistd").exception("failed on\nline two")
    [line] = lines(out)
    assert "failed on\\nline two\\nTraceback (most recent call last):\\n" in line
    assert line.endswith("ValueError: bad\\nthing")


def test_json_lines() -> None:
    out = io.StringIO()
    setup_logging("warning", "json", stream=out, env={"JOURNAL_STREAM": "1:2"})
    log = logging.getLogger("peerdistd.engine")
    log.info("hidden")
    log.warning("bad block from %s", "192.0.2.9", extra={"peer": "192.0.2.9", "block": 4})
    try:
        raise KeyError("k")
    except KeyError:
        log.error("oops", exc_info=True)
    first, second = (json.loads(line) for line in lines(out))
    assert re.fullmatch(TS, first.pop("ts"))
    assert first == {
        "level": "warning",
        "logger": "peerdistd.engine",
        "msg": "bad block from 192.0.2.9",
        "peer": "192.0.2.9",
        "block": 4,
    }
    assert second["msg"] == "oops"
    assert second["exc"].endswith("KeyError: 'k'")


def test_json_extras_that_are_not_json_become_strings() -> None:
    out = io.StringIO()
    setup_logging("info", "json", stream=out, env={})
    logging.getLogger("p").info("m", extra={"data": b"\x01", "msg_id": 7})
    event = json.loads(out.getvalue())
    assert event["data"] == "b'\\x01'"
    assert event["msg_id"] == 7


def test_setup_again_replaces_the_handler_and_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", stream=first, env={})
    setup_logging("error", "text", stream=second, env={})
    logging.getLogger("p").warning("dropped")
    logging.getLogger("p").error("kept")
    assert first.getvalue() == ""
    assert lines(second)[0].endswith("ERROR p: kept")


def test_bad_level_or_format_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^daemon\.log_level: must be one of debug"):
        setup_logging("verbose", "text", stream=io.StringIO(), env={})
    with pytest.raises(ConfigError, match=r"^daemon\.log_format: must be one of text, json"):
        setup_logging("info", "xml", stream=io.StringIO(), env={})


def test_is_journal_compares_the_stream_device_and_inode() -> None:
    read, write = os.pipe()
    with os.fdopen(write, "w") as stream, os.fdopen(read):
        info = os.fstat(stream.fileno())
        assert is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"})
        assert not is_journal(stream, {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino + 1}"})
        assert not is_journal(stream, {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_logger_logs_once_per_key_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    quiet = RateLimitedLogger(logging.getLogger("peerdistd.peers"), 60.0, clock=clock)
    caplog.set_level(logging.DEBUG, logger="peerdistd.peers")
    assert quiet.warning(("192.0.2.1", "bad-block"), "bad block from %s", "192.0.2.1")
    assert not quiet.warning(("192.0.2.1", "bad-block"), "bad block from %s", "192.0.2.1")
    assert quiet.warning(("192.0.2.2", "bad-block"), "bad block from %s", "192.0.2.2")
    clock.now += 59.9
    assert not quiet.warning(("192.0.2.1", "bad-block"), "bad block from %s", "192.0.2.1")
    clock.now += 0.1
    assert quiet.error(("192.0.2.1", "bad-block"), "bad block from %s", "192.0.2.1")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "bad block from 192.0.2.1"),
        (logging.DEBUG, "bad block from 192.0.2.1"),
        (logging.WARNING, "bad block from 192.0.2.2"),
        (logging.DEBUG, "bad block from 192.0.2.1"),
        (logging.ERROR, "bad block from 192.0.2.1 (2 more like this since the last report)"),
    ]
    assert quiet.suppressed_total == 2


def test_rate_limited_logger_bounds_its_key_table(caplog: pytest.LogCaptureFixture) -> None:
    quiet = RateLimitedLogger(logging.getLogger("t"), 60.0, max_keys=2, clock=Clock())
    caplog.set_level(logging.WARNING, logger="t")
    for key in ("a", "b", "c"):  # "c" evicts "a", the oldest
        assert quiet.warning(key, key)
    assert not quiet.warning("c", "c")
    assert quiet.warning("a", "a")  # forgotten, so logged again (and "b" is evicted)
    assert not quiet.warning("c", "c")
    assert [r.getMessage() for r in caplog.records] == ["a", "b", "c", "a"]
