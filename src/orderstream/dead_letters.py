"""A dead letter, built one way wherever a record that can never succeed is parked.

The stock agent, the sink and the Faust agents each park such a record on its topic's
dead-letter topic. Building it here gives every one the same headers (why, and where
the original sits), the same log line, and a size the broker takes, however large the
original was.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from orderstream.logs import record_context
from orderstream.topics import DLQ_SUFFIX, DLQ_TRUNCATED_HEADER, dead_letter_headers

log = logging.getLogger(__name__)

__all__ = ["MAX_BYTES", "DeadLetter", "dead_letter_of"]

# A dead letter keeps the original bytes up to this size (Kafka's default message limit
# is 1 MiB); a larger one is cut, with the original sizes in a header.
MAX_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """The record to send: the original key and value (None stays null), and why."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter_of(
    topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, *, reason: str
) -> DeadLetter:
    """Log why the record at ``topic/partition@offset`` is parked; return its dead letter."""
    log.warning(
        "dead letter from %s/%d@%d: %s",
        topic,
        partition,
        offset,
        reason,
        extra=record_context(topic, partition, offset),
    )
    headers = dead_letter_headers(topic, partition, offset, reason)
    if len(key or b"") + len(value or b"") > MAX_BYTES:
        # With our headers it might not fit the broker's message size, and a dead letter
        # that cannot be written would stop the partition. The whole record stays on its
        # source topic, where the source header points.
        headers.append((DLQ_TRUNCATED_HEADER, f"{len(key or b'')}/{len(value or b'')}".encode()))
        key = key[: MAX_BYTES // 2] if key is not None else None
        value = value[: MAX_BYTES // 2] if value is not None else None
    return DeadLetter(topic + DLQ_SUFFIX, key, value, headers)
