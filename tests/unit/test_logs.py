"""Log lines: JSON objects or text, with a record's context keys when a call passes them."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
from datetime import datetime
from typing import Any

import pytest

from orderstream.logs import (
    JsonFormatter,
    TextFormatter,
    configure,
    make_formatter,
    record_context,
)


def make_record(
    message: str = "decided %s",
    args: tuple[Any, ...] = ("o-1",),
    extra: dict[str, Any] | None = None,
    exc_info: Any = None,
) -> logging.LogRecord:
    logger = logging.getLogger("orderstream.test")
    return logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, message, args, exc_info, extra=extra
    )


def test_a_json_line_has_time_level_logger_and_the_formatted_message() -> None:
    line = JsonFormatter().format(make_record())
    assert "\n" not in line
    fields = json.loads(line)
    assert set(fields) == {"time", "level", "logger", "message"}
    assert fields["level"] == "WARNING"
    assert fields["logger"] == "orderstream.test"
    assert fields["message"] == "decided o-1"
    # ISO 8601 in UTC, to the millisecond, with a Z.
    assert fields["time"].endswith("Z")
    assert datetime.fromisoformat(fields["time"]).utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert len(fields["time"]) == len("2024-01-01T00:00:00.000Z")


def test_a_json_line_carries_the_record_context_and_leaves_out_what_is_missing() -> None:
    extra = record_context("order-requests", 3, 1234, order_id="o-1")
    fields = json.loads(JsonFormatter().format(make_record(extra=extra)))
    assert fields["topic"] == "order-requests"
    assert fields["partition"] == 3
    assert fields["offset"] == 1234
    assert fields["order_id"] == "o-1"
    assert "product_id" not in fields  # None: not shown


def test_a_json_line_keeps_only_the_documented_keys_of_extra() -> None:
    record = make_record(extra={"topic": "t", "password": "hunter2", "partition": None})
    fields = json.loads(JsonFormatter().format(record))
    assert fields["topic"] == "t"
    assert "password" not in fields
    assert "partition" not in fields


def test_an_exception_goes_into_the_same_json_line() -> None:
    try:
        raise ValueError("no stock\nat all")
    except ValueError:
        record = make_record("failed", (), exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line  # newlines of the message and traceback are escaped
    fields = json.loads(line)
    assert fields["message"] == "failed"
    assert fields["exception"].startswith("Traceback (most recent call last):")
    assert fields["exception"].endswith("ValueError: no stock\nat all")


def test_any_message_and_any_context_value_give_one_json_line() -> None:
    record = make_record(
        'ünïcode \x00 and "quotes" %s', ({"nested": 1},), extra={"order_id": object()}
    )
    fields = json.loads(JsonFormatter().format(record))
    assert fields["message"].startswith('ünïcode \x00 and "quotes" ')
    assert fields["order_id"].startswith("<object object")


def test_a_text_line_ends_with_the_record_context() -> None:
    extra = record_context("stock-commands", 0, 7, product_id="sku-1")
    line = TextFormatter().format(make_record(extra=extra))
    assert line.endswith(
        "WARNING orderstream.test: decided o-1 [topic=stock-commands partition=0 offset=7"
        " product_id=sku-1]"
    )
    assert TextFormatter().format(make_record()).endswith("orderstream.test: decided o-1")


@pytest.mark.parametrize(("log_format", "kind"), [("json", JsonFormatter), ("text", TextFormatter)])
def test_configure_sends_every_logger_to_one_handler(
    log_format: Any, kind: type[logging.Formatter]
) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    try:
        configure("info", log_format, stream)
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, kind)
        assert isinstance(make_formatter(log_format), kind)
        logging.getLogger("orderstream.somewhere").info("hello %d", 1)
        logging.getLogger("orderstream.somewhere").debug("below the level")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logging.captureWarnings(False)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert "hello 1" in lines[0]


# A role run by the real command machinery (mode's Worker under the Supervisor) that logs
# a line about a record, then stops its process the way an operator does.
_PROBE = textwrap.dedent(
    """
    import logging, os, signal

    from mode import Service

    from orderstream.cli import _run_services
    from orderstream.logs import configure, record_context
    from orderstream.settings import Settings

    class Probe(Service):
        async def on_started(self) -> None:
            logging.getLogger("probe").warning(
                "probe line", extra=record_context("t", 1, 2, order_id="o-1")
            )
            os.kill(os.getpid(), signal.SIGTERM)

    settings = Settings(log_format="json")
    configure(settings.log_level, settings.log_format)
    _run_services(settings, {"probe": Probe})
    """
)


def test_mode_s_worker_keeps_the_json_lines() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (done.stdout + done.stderr).splitlines()
    assert lines, done
    # Every line, mode's own included, is one JSON object.
    parsed = [json.loads(line) for line in lines]
    probe = [fields for fields in parsed if fields["message"] == "probe line"]
    assert probe == [
        {
            "time": probe[0]["time"],
            "level": "WARNING",
            "logger": "probe",
            "message": "probe line",
            "topic": "t",
            "partition": 1,
            "offset": 2,
            "order_id": "o-1",
        }
    ]
    assert any("role probe running" in fields["message"] for fields in parsed)
