"""One dead letter, whoever parks the record: its headers, its log line, its size."""

from __future__ import annotations

import logging

import pytest

from orderstream.dead_letters import MAX_BYTES, dead_letter_of
from orderstream.topics import DLQ_REASON_HEADER, DLQ_SOURCE_HEADER, DLQ_TRUNCATED_HEADER


def test_a_dead_letter_keeps_the_original_bytes_and_says_why_and_where(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="orderstream.dead_letters"):
        dead = dead_letter_of("order-events", 3, 41, b"o-1", b"{not json", reason="bad JSON")
    assert (dead.topic, dead.key, dead.value) == ("order-events-dlq", b"o-1", b"{not json")
    assert dict(dead.headers) == {
        DLQ_REASON_HEADER: b"bad JSON",
        DLQ_SOURCE_HEADER: b"order-events/3/41",
    }
    assert "dead letter from order-events/3@41: bad JSON" in caplog.text


def test_a_null_value_stays_null() -> None:
    assert dead_letter_of("t", 0, 0, None, None, reason="no value").value is None


def test_a_dead_letter_too_large_for_the_broker_is_cut_with_the_original_sizes() -> None:
    key, value = b"k" * 10, b"v" * (2 * MAX_BYTES)
    dead = dead_letter_of("payment-results", 1, 7, key, value, reason="too long")
    assert dead.key == key
    assert dead.value == value[: MAX_BYTES // 2]
    assert dict(dead.headers)[DLQ_TRUNCATED_HEADER] == f"10/{2 * MAX_BYTES}".encode()
    # Just under the bound: whole.
    whole = dead_letter_of("t", 0, 0, None, b"v" * MAX_BYTES, reason="x")
    assert whole.value == b"v" * MAX_BYTES
    assert DLQ_TRUNCATED_HEADER not in dict(whole.headers)
