"""Log records with their fields: one event a line, plain values, structure for any handler.

The core reports what happened as ``Log(level, event, fields)``; :func:`log_action`
turns that into one standard ``logging`` record. Its message is the event and its
fields as ``key=value`` pairs (``hub.link.lost code=1006 retry_in=0.294 attempt=1``),
so a bare ``logging.basicConfig`` shows everything; and it carries the event name
as ``record.event`` and each field as an attribute of its own (``record.code``,
``record.retry_in``), the way ``extra=`` does, so a JSON formatter or structlog's
``ProcessorFormatter`` gets the structure without parsing text.

Values are made plain on the way, since a log line is read by people and log
shippers, not by Python: a close code is its number (``1008``, never
``CloseCode.POLICY``), a duration is rounded to the millisecond, collections
become lists and objects, and anything else is its ``str``. A field whose name
a ``LogRecord`` already uses (``message``, ``name``, ``args``...) keeps its value
under that name plus ``_`` (``message_``).

The ``megapresence`` command installs one of the two formatters below, ``text``
or ``json`` (one JSON object a line), behind a :class:`ContextFilter` that stamps
``app`` and ``instance`` on every record, megapresence's own or a library's.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import time
from collections.abc import Mapping, Set
from typing import Final, TextIO, final

from megapresence_core import Log

__all__ = [
    "FORMATTERS",
    "MAX_LOGGED_CHARS",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "bounded",
    "configure_logging",
    "log_action",
    "log_event",
    "plain",
    "record_fields",
]

logger = logging.getLogger("megapresence")

#: Attributes every record has: anything else on a record is a field.
_STANDARD: Final = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
#: Set by the formatters' callers, shown in places of their own rather than as fields.
_CONTEXT: Final = ("app", "instance")
_OWN: Final = frozenset({"event", *_CONTEXT})

#: Durations and rates are rounded to this many decimals (a millisecond for seconds).
_DECIMALS: Final = 3

#: What a log line shows of a value a peer chose (a path, a user id, a reason that
#: quotes one): enough to recognise it, so that long requests cannot fill the log.
MAX_LOGGED_CHARS: Final = 200


def bounded(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def plain(value: object) -> object:
    """``value`` as something JSON and ``key=value`` text show as it is meant."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):  # before str and int: IntEnum, StrEnum
        return int(value) if isinstance(value, int) else plain(value.value)
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return round(value, _DECIMALS) if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, Set):
        return sorted((plain(item) for item in value), key=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _attribute(key: str) -> str:
    return key + "_" if key in _STANDARD or key in _OWN else key


def log_event(target: logging.Logger, level: int, event: str, fields: Mapping[str, object]) -> None:
    """Log ``event`` with ``fields``: in the message as text, on the record as attributes."""
    if not target.isEnabledFor(level):
        return
    values = {key: plain(value) for key, value in fields.items()}
    extra = {_attribute(key): value for key, value in values.items()}
    target.log(level, "%s", _logfmt(event, values), extra={"event": event, **extra})


def log_action(log: Log, target: logging.Logger = logger) -> None:
    """Perform a core ``Log`` action: one record on the ``megapresence`` logger."""
    log_event(target, log.level, log.event, log.fields)


def record_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a record carries beyond the standard ones (``extra=``, or an event's)."""
    return {
        key: plain(value)
        for key, value in vars(record).items()
        if key not in _STANDARD and key not in _OWN
    }


def _text(value: object) -> str:
    if (
        isinstance(value, str)
        and value
        and not any(c in value for c in ' ="\\')
        and (value.isprintable())
    ):
        return value
    return json.dumps(value, ensure_ascii=False)


def _logfmt(head: str, fields: Mapping[str, object]) -> str:
    return " ".join([head, *(f"{key}={_text(value)}" for key, value in fields.items())])


def _timestamp(record: logging.LogRecord) -> str:
    """UTC, ISO 8601, to the millisecond: sorts as text and reads the same everywhere."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class _Formatter(logging.Formatter):
    """What both formats take from a record."""

    @staticmethod
    def context(record: logging.LogRecord) -> dict[str, object]:
        return {key: plain(getattr(record, key)) for key in _CONTEXT if hasattr(record, key)}

    def exception(self, record: logging.LogRecord) -> tuple[str, str] | None:
        """The exception's type name and its traceback, if the record has one."""
        if record.exc_info is None or record.exc_info[0] is None:
            return None
        return record.exc_info[0].__name__, self.formatException(record.exc_info)


@final
class TextFormatter(_Formatter):
    """``TIME LEVEL LOGGER EVENT key=value ... app=A instance=I``, one line a record.

    A record without an event shows its message (newlines escaped) where the event
    would be. A traceback, when there is one, follows on the next lines.
    """

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        head = event if isinstance(event, str) else record.getMessage().replace("\n", "\\n")
        fields = {**record_fields(record), **self.context(record)}
        line = f"{_timestamp(record)} {record.levelname} {record.name} {_logfmt(head, fields)}"
        exception = self.exception(record)
        return line if exception is None else f"{line}\n{exception[1]}"


@final
class JsonFormatter(_Formatter):
    """One JSON object a line: ``time``, ``level``, ``app``, ``instance``, ``logger``, then
    ``event`` (megapresence's records) or ``message`` (any other), then the fields, then
    ``exc_type`` and ``exc`` (the traceback, as one string) when there is an exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {"time": _timestamp(record), "level": record.levelname.lower()}
        line.update(self.context(record))
        line["logger"] = record.name
        event = getattr(record, "event", None)
        if isinstance(event, str):
            line["event"] = event
        else:
            line["message"] = record.getMessage()
        for key, value in record_fields(record).items():
            line[key + "_" if key in line else key] = value
        exception = self.exception(record)
        if exception is not None:
            line["exc_type"], line["exc"] = exception
        return json.dumps(line, ensure_ascii=False)


@final
class ContextFilter(logging.Filter):
    """Stamp ``app`` and ``instance`` on every record that passes (unless it has its own)."""

    def __init__(self, *, app: str, instance: str) -> None:
        super().__init__()
        self.context = {"app": app, "instance": instance}

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


#: The ``--log-format`` choices.
FORMATTERS: Final[Mapping[str, type[logging.Formatter]]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
}


def configure_logging(
    *, level: str, log_format: str, app: str, instance: str, stream: TextIO | None = None
) -> logging.Handler:
    """Send every record at ``level`` or above to ``stream`` (stderr) as ``log_format``.

    Replaces the root logger's handlers, as ``logging.basicConfig(force=True)`` does.
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(FORMATTERS[log_format]())
    handler.addFilter(ContextFilter(app=app, instance=instance))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    return handler
