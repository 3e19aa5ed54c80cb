"""Log records: the core's ``Log`` actions become one plain, structured record each."""

from __future__ import annotations

import enum
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from megapresence_anyio._logging import (
    MAX_LOGGED_CHARS,
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bounded,
    configure_logging,
    log_action,
    log_event,
    plain,
    record_fields,
)
from megapresence_core import (
    CloseCode,
    HubLinkConfig,
    Log,
    LogLevel,
    Presence,
    PresenceConfig,
)
from megapresence_core.events import HubLinkStarted, HubLost

from .helpers import drive


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, Capture]]:
    target = logging.getLogger("megapresence.test-logging")
    handler = Capture()
    target.addHandler(handler)
    target.setLevel(logging.DEBUG)
    yield target, handler
    target.removeHandler(handler)


class Colour(enum.Enum):
    RED = "red"


def test_values_are_made_plain() -> None:
    assert plain(CloseCode.POLICY) == 1008
    assert type(plain(CloseCode.POLICY)) is int
    assert plain(LogLevel.WARNING) == 30
    assert plain(Colour.RED) == "red"
    assert plain(0.29381726) == 0.294
    assert plain(float("inf")) == "inf"
    assert plain(True) is True
    assert plain(None) is None
    assert plain(("a", 1.23456, {"k": CloseCode.REQUEUE})) == ["a", 1.235, {"k": 4503}]
    assert plain(frozenset({"b", "a"})) == ["a", "b"]
    assert plain(b"\xffok") == "\\xffok"
    assert plain(Path("a/b")) == "a/b"  # anything else: its str


def test_what_a_peer_chose_is_logged_cut_short_with_a_marker() -> None:
    assert bounded("short") == "short"
    assert bounded("x" * MAX_LOGGED_CHARS) == "x" * MAX_LOGGED_CHARS
    cut = bounded("y" * 15_000)
    assert cut == "y" * MAX_LOGGED_CHARS + "...[14800 more characters]"
    assert bounded("abcdef", limit=2) == "ab...[4 more characters]"


def test_a_core_log_becomes_one_record_with_its_fields_as_attributes(
    captured: tuple[logging.Logger, Capture],
) -> None:
    target, handler = captured
    log = Log(
        level=LogLevel.WARNING,
        event="hub.link.lost",
        fields={"code": CloseCode.GOING_AWAY, "retry_in": 0.2938172, "reason": "gone away"},
    )
    log_action(log, target)
    (record,) = handler.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == 'hub.link.lost code=1001 retry_in=0.294 reason="gone away"'
    assert record.__dict__["event"] == "hub.link.lost"
    assert record.__dict__["code"] == 1001
    assert type(record.__dict__["code"]) is int
    assert record.__dict__["retry_in"] == 0.294
    assert record_fields(record) == {"code": 1001, "retry_in": 0.294, "reason": "gone away"}


def test_a_field_named_like_a_record_attribute_keeps_its_value_under_a_suffix(
    captured: tuple[logging.Logger, Capture],
) -> None:
    target, handler = captured
    fields = {"code": "bad_frame", "message": "no type", "name": "x", "event": "y"}
    log_event(target, logging.WARNING, "hub.error", fields)
    (record,) = handler.records
    assert record.name == target.name
    assert record.__dict__["event"] == "hub.error"
    assert record_fields(record) == {
        "code": "bad_frame",
        "message_": "no type",
        "name_": "x",
        "event_": "y",
    }
    assert record.getMessage() == 'hub.error code=bad_frame message="no type" name=x event=y'


def test_nothing_is_built_below_the_level(captured: tuple[logging.Logger, Capture]) -> None:
    target, handler = captured
    target.setLevel(logging.INFO)
    log_action(Log(level=LogLevel.DEBUG, event="presence.kick.unknown_session"), target)
    assert handler.records == []


def test_the_hub_link_log_of_the_issue_has_no_python_reprs(
    captured: tuple[logging.Logger, Capture],
) -> None:
    # The line the issue quoted: hub.link.lost with a retry_in of many decimals.
    target, handler = captured
    config = HubLinkConfig(bridge_id="b", instance_id="i", jitter_seed=7)
    presence = Presence(PresenceConfig(hub_link=config))
    drive(presence, HubLinkStarted(now=0))
    for action in drive(presence, HubLost(now=0, code=CloseCode.POLICY, reason="bad token")):
        if isinstance(action, Log):
            log_action(action, target)
    (record,) = handler.records
    assert "CloseCode" not in record.getMessage()
    assert record.__dict__["code"] == 1008


def make_record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "megapresence", "levelno": 30, "levelname": "WARNING"})
    record.created = 1_800_000_000.25
    record.msecs = 250
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_time_level_context_event_and_fields() -> None:
    record = make_record(
        msg="hub.link.lost code=1006", event="hub.link.lost", code=1006, retry_in=0.5
    )
    ContextFilter(app="chat", instance="i-1").filter(record)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2027-01-15T08:00:00.250Z",
        "level": "warning",
        "app": "chat",
        "instance": "i-1",
        "logger": "megapresence",
        "event": "hub.link.lost",
        "code": 1006,
        "retry_in": 0.5,
    }


def test_json_lines_of_other_loggers_keep_their_message_extra_and_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "nats", logging.ERROR, __file__, 1, "lost %s\nsecond line", ("it",), None
        )
        record.exc_info = sys.exc_info()
    record.__dict__.update(url="nats://x", level="mine")
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "lost it\nsecond line"
    assert parsed["url"] == "nats://x"
    assert parsed["level"] == "error"
    assert parsed["level_"] == "mine"  # a field never hides one of the line's own keys
    assert parsed["exc_type"] == "RuntimeError"
    assert "boom" in parsed["exc"]
    assert "app" not in parsed  # no filter, no context


def test_text_lines_are_key_value_with_the_context_last() -> None:
    record = make_record(
        msg="x", event="hub.error", code="bad", message_="two words", empty="", ok=True
    )
    ContextFilter(app="chat", instance="i-1").filter(record)
    assert TextFormatter().format(record) == (
        '2027-01-15T08:00:00.250Z WARNING megapresence hub.error code=bad message_="two words" '
        'empty="" ok=true app=chat instance=i-1'
    )


def test_text_lines_of_other_loggers_escape_newlines_and_append_the_traceback() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("demo", logging.ERROR, __file__, 1, "a\nb", None, sys.exc_info())
    first, *rest = TextFormatter().format(record).split("\n")
    assert first.endswith(" ERROR demo a\\nb")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad"


def test_the_context_filter_does_not_overwrite_a_record_of_its_own() -> None:
    record = make_record(app="other")
    ContextFilter(app="chat", instance="i-1").filter(record)
    assert (record.__dict__["app"], record.__dict__["instance"]) == ("other", "i-1")


def test_configure_logging_sends_every_logger_through_one_formatter() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, root.handlers[:])
    try:
        configure_logging(level="info", log_format="json", app="a", instance="i", stream=stream)
        logging.getLogger("elsewhere").info("hello %s", "you")
        logging.getLogger("elsewhere").debug("not shown")
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line)["message"] == "hello you"
    assert json.loads(line)["app"] == "a"
