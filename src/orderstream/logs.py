"""How every orderstream process logs: plain text lines, or one JSON object per line.

``ORDERSTREAM_LOG_FORMAT=json`` makes each line a JSON object: ``time`` (ISO 8601, UTC,
``Z``), ``level``, ``logger``, ``message``, ``exception`` (the traceback, if any). A log
call about one Kafka record passes where it sits, and the order it is about when known,
as ``extra``; both formats show those keys (RECORD_KEYS only; one left out, or None, is
not shown), so one can grep or query by them (``jq 'select(.order_id == "o-1")'``)::

    log.warning("dead letter: %s", reason, extra=record_context(topic, partition, offset))

mode's Worker configures logging itself when it starts (it clears the root handlers and
installs a colored handler of its own): every command configures logging with
``configure`` first, and runs the Worker with ``override_logging=False``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal, TypeAlias

LogFormat: TypeAlias = Literal["text", "json"]

# The context a log line about a record may carry, in the order they are shown.
RECORD_KEYS = ("topic", "partition", "offset", "order_id", "product_id")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def record_context(
    topic: str,
    partition: int,
    offset: int,
    *,
    order_id: str | None = None,
    product_id: str | None = None,
) -> dict[str, Any]:
    """Return the ``extra`` of a log call about the record at ``topic/partition@offset``."""
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "order_id": order_id,
        "product_id": product_id,
    }


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """Return the record's context keys that were given a value."""
    fields = record.__dict__
    return {key: fields[key] for key in RECORD_KEYS if fields.get(key) is not None}


class JsonFormatter(logging.Formatter):
    """Format a log record as one line of JSON."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        if record.exc_info and not record.exc_text:
            # Formatted once per record and cached, as logging.Formatter does.
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a context value of an unexpected type still gives a line.
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Format a log record as a text line, its context keys at the end as ``key=value``."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        text = super().formatMessage(record)
        context = _context(record)
        if not context:
            return text
        return f"{text} [{' '.join(f'{key}={value}' for key, value in context.items())}]"


def _iso_utc(created: float) -> str:
    """Return a log record's time as ISO 8601 in UTC to the millisecond, ``Z`` suffixed."""
    moment = datetime.fromtimestamp(created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_formatter(log_format: LogFormat) -> logging.Formatter:
    """Return the formatter of ``log_format``."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: LogFormat, stream: IO[str] | None = None) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``log_format``, from ``level``."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(log_format))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python's own warnings (deprecations in a dependency, ...) as log lines too, so a
    # JSON log stays JSON.
    logging.captureWarnings(True)
